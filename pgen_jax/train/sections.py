"""The training stages' config sections: vq, sft and grpo, each with its own checks."""

from __future__ import annotations

import dataclasses

from pgen_jax.errors import ConfigError
from pgen_jax.models.config import PARTS
from pgen_jax.models.llama import REMAT, remat_policy
from pgen_jax.rewards.compose import EXTERNAL, HACKABLE, IN_JIT
from pgen_jax.sections import Section, all_in, at_least, one_of, positive
from pgen_jax.train.grpo_rewards import KINDS
from pgen_jax.train.hacking import DRIFT


@dataclasses.dataclass(frozen=True)
class VQSection(Section):
  where = "vq"
  num_steps: int
  batch_size: int
  crop: int               # random crops of this side (a multiple of the patch); 0: whole images
  lr: float
  warmup_steps: int
  clip: float
  beta: float             # commitment weight
  perceptual: float       # weight of an LPIPS term beside L2; 0: off
  restart_every: int      # steps between dead-code restarts
  restart_below: float
  usage_decay: float
  holdout_every: int      # items 0, k, 2k, ... are never trained on
  log_every: int
  ckpt_every: int
  keep: int

  def check(self) -> None:
    at_least(self, 1, "num_steps", "batch_size", "restart_every", "holdout_every", "log_every", "ckpt_every", "keep")
    at_least(self, 0, "crop", "warmup_steps")
    positive(self, "lr", "clip")
    if not self.perceptual >= 0:
      raise ConfigError(f"vq.perceptual: {self.perceptual!r} must be a number >= 0 (0: no perceptual term)")


def _check_remat(section: Section) -> None:
  if remat_policy(section.remat) not in REMAT:
    raise ConfigError(f"{section.key('remat')}: {section.remat!r}; use one of {', '.join(REMAT)}")


@dataclasses.dataclass(frozen=True)
class SFTSection(Section):
  where = "sft"
  batch_size: int         # global, per optimizer step
  grad_accum: int         # micro-batches per step
  lr: float
  warmup_steps: int
  epochs: float
  num_steps: int          # 0: epochs x windows / batch_size
  b1: float
  b2: float
  weight_decay: float
  clip: float
  trainable: tuple        # PARTS that train
  lr_scales: dict         # lr multiplier per part
  remat: str              # decoder layers' policy (models.llama.REMAT)
  pretokenize: bool       # the frozen VQ tokenizes every item's target once
  uncond_prob: float      # prompts blanked to the CFG row
  log_every: int
  eval_every: int
  eval_batches: int
  eval_batch_size: int
  ckpt_every: int
  keep: int
  max_bad_steps: int      # consecutive non-finite steps before the run stops
  grid_samples: int
  cfg_weight: float
  genre_probe: bool

  def check(self) -> None:
    at_least(self, 1, "batch_size", "grad_accum", "log_every", "eval_every", "ckpt_every", "eval_batches",
             "eval_batch_size", "keep", "max_bad_steps", "grid_samples")
    at_least(self, 0, "num_steps", "warmup_steps")
    if self.batch_size % self.grad_accum:
      raise ConfigError(f"sft.batch_size: {self.batch_size} is not a multiple of sft.grad_accum")
    positive(self, "lr")
    if not 0 <= self.uncond_prob < 1:
      raise ConfigError("sft.uncond_prob: must be in [0, 1)")
    all_in(self, "trainable", PARTS, empty_ok=False)
    if self.pretokenize and "vqmodel" in self.trainable:
      raise ConfigError("sft.pretokenize: the targets are tokenized once by the frozen vqmodel, which sft.trainable "
                        "trains; set --config.sft.pretokenize=False")
    for part, scale in self.lr_scales.items():
      if part not in PARTS:
        raise ConfigError(f"sft.lr_scales.{part}: unknown part; choose from {PARTS}")
      if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and scale > 0):
        raise ConfigError(f"sft.lr_scales.{part}: {scale!r} must be a positive number")
    _check_remat(self)


@dataclasses.dataclass(frozen=True)
class GRPOSection(Section):
  where = "grpo"
  num_steps: int
  prompts_per_step: int   # histories per step (global)
  group_size: int         # G samples per history
  lr: float
  warmup_steps: int
  b1: float
  b2: float
  weight_decay: float
  grad_clip: float
  beta: float             # KL to the reference; 0 skips it
  eps_low: float
  eps_high: float
  advantage: str          # sum: of the weighted total | per_reward: each reward normalised in its group, then summed
  advantage_scale: str    # std (GRPO) | none (Dr.GRPO)
  advantage_eps: float
  dynamic_sampling: bool
  logprobs: str           # cond | cfg
  cfg_weight: float
  temperature: float
  inner_updates: int
  micro_batch: int        # prompts per accumulation slice; 0: all
  rollout_chunk: int      # prompts the sampler draws at once; 0: all
  remat: str
  sample_ahead: bool
  reward: str             # train.grpo_rewards.KINDS
  reward_weights: dict
  reward_normalize: str
  diversity_weight: float
  fixed_seed: int
  log_every: int
  eval_every: int
  save_rollouts: int
  ckpt_every: int
  grid_every: int
  defence_response: str
  defence_window: int
  defence_warmup: int
  defence_patience: int
  defence_std_ratio: float
  defence_distance_ratio: float
  defence_drift: tuple
  defence_drift_z: float
  defence_entropy_ratio: float
  defence_lr_factor: float
  defence_diversity_factor: float
  defence_max_rollbacks: int

  def check(self) -> None:
    at_least(self, 1, "num_steps", "prompts_per_step", "inner_updates", "log_every", "ckpt_every", "grid_every",
             "defence_window", "defence_patience")
    at_least(self, 0, "eval_every", "save_rollouts", "warmup_steps")
    at_least(self, 2, "group_size")  # group advantages need at least 2 samples
    if not isinstance(self.micro_batch, int) or self.micro_batch < 0 or (
        self.micro_batch and self.prompts_per_step % self.micro_batch):
      raise ConfigError(f"grpo.micro_batch: {self.micro_batch!r} must be 0 (all prompts at once) or divide "
                        f"grpo.prompts_per_step ({self.prompts_per_step})")
    one_of(self, "reward", KINDS)
    one_of(self, "reward_normalize", ("none", "running"))
    one_of(self, "advantage_scale", ("std", "none"))
    one_of(self, "advantage", ("sum", "per_reward"))
    if not isinstance(self.rollout_chunk, int) or self.rollout_chunk < 0 or (
        self.rollout_chunk and self.prompts_per_step % self.rollout_chunk):
      raise ConfigError(f"grpo.rollout_chunk: {self.rollout_chunk!r} must be 0 (all prompts at once) or divide "
                        f"grpo.prompts_per_step ({self.prompts_per_step})")
    one_of(self, "logprobs", ("cond", "cfg"))
    one_of(self, "defence_response", ("stop", "rollback"))
    all_in(self, "defence_drift", DRIFT)
    positive(self, "lr", "eps_low", "eps_high", "temperature", "advantage_eps", "defence_distance_ratio",
             "defence_drift_z")
    if isinstance(self.defence_entropy_ratio, bool) or not isinstance(self.defence_entropy_ratio, (int, float)) \
        or not 0 <= self.defence_entropy_ratio < 1:
      raise ConfigError(f"grpo.defence_entropy_ratio: {self.defence_entropy_ratio!r} must be in [0, 1) (0: off)")
    if not self.beta >= 0:
      raise ConfigError("grpo.beta: must be >= 0 (0 skips the reference model)")
    terms = IN_JIT + EXTERNAL + HACKABLE
    bad = [k for k in self.reward_weights if k not in terms]
    if bad:
      raise ConfigError(f"grpo.reward_weights: unknown terms {bad}; choose from {terms}")
    if self.reward == "models":
      if not any(self.reward_weights.values()):
        raise ConfigError("grpo.reward_weights: every weight is 0; give at least one term a weight")
    _check_remat(self)
