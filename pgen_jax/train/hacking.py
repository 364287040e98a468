"""Reward-hacking defence signals: the paper's failure was one popular poster for every user, with the
reward's spread collapsing as it began. Two signals, logged every GRPO step:

- reward spread collapse: the batch's reward std falls below `std_ratio` x the median std of the
  last `window` steps;
- convergence across users: the mean cosine similarity between (CLIP) embeddings of images generated
  for DIFFERENT users rises above `similarity` (and above its own recent median by `rise`).

An alarm needs `patience` consecutive flagged steps. `diversity_penalty` is a reward term that
penalises an image for resembling other users' images.
"""

from __future__ import annotations

import collections
import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class DefenceConfig:
  window: int = 20
  std_ratio: float = 0.3
  similarity: float = 0.9
  rise: float = 0.05
  patience: int = 3
  warmup: int = 5                 # steps of history before any alarm
  response: str = "stop"          # stop | rollback
  diversity_weight_factor: float = 2.0  # rollback: multiply the diversity term's weight
  lr_factor: float = 0.5                # rollback: multiply the learning rate


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def cross_user_similarity(embeddings, users):
  """Mean cosine similarity over pairs of images generated for different users (scalar)."""
  e = _unit(embeddings.astype(jnp.float32))
  sim = e @ e.T
  other = users[:, None] != users[None, :]
  return jnp.sum(jnp.where(other, sim, 0.0)) / jnp.maximum(other.sum(), 1)


def diversity_penalty(embeddings, users):
  """Per image: its mean cosine similarity to images of other users (subtract it from the reward)."""
  e = _unit(embeddings.astype(jnp.float32))
  sim = e @ e.T
  other = users[:, None] != users[None, :]
  return jnp.sum(jnp.where(other, sim, 0.0), 1) / jnp.maximum(other.sum(1), 1)


@dataclasses.dataclass
class Alarm:
  step: int
  reasons: list[str]


class HackingMonitor:
  def __init__(self, cfg: DefenceConfig = DefenceConfig()):
    self.cfg = cfg
    self.stds: collections.deque = collections.deque(maxlen=cfg.window)
    self.sims: collections.deque = collections.deque(maxlen=cfg.window)
    self.flagged = 0

  def update(self, step: int, reward_std: float, similarity: float) -> Alarm | None:
    c, reasons = self.cfg, []
    if len(self.stds) >= c.warmup:
      if reward_std < c.std_ratio * float(np.median(self.stds)):
        reasons.append(f"reward std {reward_std:.4g} < {c.std_ratio} x recent median {np.median(self.stds):.4g}")
      if similarity > c.similarity and similarity > float(np.median(self.sims)) + c.rise:
        reasons.append(f"images for different users are {similarity:.3f} similar (recent median "
                       f"{np.median(self.sims):.3f})")
    self.stds.append(float(reward_std))
    self.sims.append(float(similarity))
    self.flagged = self.flagged + 1 if reasons else 0
    return Alarm(step, reasons) if self.flagged >= c.patience else None

  def state(self) -> dict:
    return {"stds": list(self.stds), "sims": list(self.sims), "flagged": self.flagged}

  def restore(self, state: dict) -> None:
    self.stds.extend(state["stds"])
    self.sims.extend(state["sims"])
    self.flagged = state["flagged"]
