"""The GRPO stage's response to a reward-hacking alarm (the signals are in pgen_jax.train.hacking).

grpo.defence_response = stop: the run exits (status 3) naming the last healthy checkpoint: the newest
one from before the parameters whose samples were the first flagged in the alarm's streak.
grpo.defence_response = rollback: that checkpoint is restored (later ones are deleted) and training continues more
cautiously (after grpo.defence_max_rollbacks roll-backs the next alarm stops the run); after the
n-th roll-back the learning rate is lr_factor^n x the schedule's and the diversity weight
max(grpo.diversity_weight, 0.1) x diversity_weight_factor^n, and rollouts are drawn with keys folded
with n (the restored step would otherwise replay the very samples that were hacked). n, the two factors and the monitor's state are saved with every checkpoint, so a run
resumed after a roll-back continues exactly as the uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import jax
import numpy as np

from pgen_jax.errors import RunStopped
from pgen_jax.train.hacking import Alarm, DefenceConfig, HackingMonitor


class HackingDetected(RunStopped):
  pass


def defence_config(grpo_cfg) -> DefenceConfig:
  return DefenceConfig(window=grpo_cfg.defence_window, std_ratio=grpo_cfg.defence_std_ratio,
                       distance_ratio=grpo_cfg.defence_distance_ratio, patience=grpo_cfg.defence_patience,
                       warmup=grpo_cfg.defence_warmup, drift_alarm=tuple(grpo_cfg.defence_drift),
                       drift_z=grpo_cfg.defence_drift_z,
                       entropy_ratio=grpo_cfg.defence_entropy_ratio, response=grpo_cfg.defence_response,
                       diversity_weight_factor=grpo_cfg.defence_diversity_factor,
                       lr_factor=grpo_cfg.defence_lr_factor)


class Defence:
  def __init__(self, cfg):
    self.settings = defence_config(cfg.grpo)
    self.monitor = HackingMonitor(self.settings)
    self.base_diversity = cfg.grpo.diversity_weight
    self.max_rollbacks = cfg.grpo.defence_max_rollbacks
    self.rollbacks = 0

  def must_stop(self, healthy_step: int | None) -> bool:
    """Whether an alarm stops the run: the response is stop, there is no checkpoint to roll back to,
    or the roll-backs are spent."""
    return self.settings.response == "stop" or healthy_step is None or self.rollbacks >= self.max_rollbacks

  def stop(self, alarm: Alarm, step: int, healthy_step: int | None, latest: Path) -> NoReturn:
    where = (f"the last healthy checkpoint is step {healthy_step} in {latest}" if healthy_step is not None else
             f"no checkpoint from before step {alarm.suspect_from} (whose samples were the first flagged) is "
             f"kept in {latest}; rerun GRPO with a lower grpo.lr")
    raise HackingDetected(f"reward hacking suspected at step {step}: {'; '.join(alarm.reasons)}. Stopped; {where}")

  @property
  def lr_scale(self) -> float:
    return float(np.float32(self.settings.lr_factor) ** self.rollbacks)

  def diversity(self) -> float:
    if not self.rollbacks:
      return self.base_diversity
    return max(self.base_diversity, 0.1) * self.settings.diversity_weight_factor ** self.rollbacks

  def sampling_key(self, key, at: int):
    key = jax.random.fold_in(key, at)
    return jax.random.fold_in(key, self.rollbacks) if self.rollbacks else key

  def roll_back(self, state: dict, rewards, replicated) -> dict:
    """After the checkpoint was restored into `state`: one more roll-back's lr and diversity weight."""
    self.rollbacks += 1
    self.monitor.after_rollback()
    rewards.diversity = self.diversity()
    return {**state, "lr_scale": jax.device_put(np.float32(self.lr_scale), replicated)}

  def state(self, rewards) -> dict:
    return {"rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "diversity_weight": rewards.diversity,
            "monitor": self.monitor.state()}

  def restore(self, state: dict, rewards) -> None:
    """From a checkpoint (the learning-rate factor itself is in the training state, lr_scale)."""
    self.rollbacks = state["rollbacks"]
    rewards.diversity = state["diversity_weight"]
    self.monitor.restore(state["monitor"])
