"""The reward_models section of the config: the frozen reward and metric models that vq (LPIPS), grpo
(rewards), eval (metrics) and fetch (downloads) share, and the scorer process serving NIMA and Qwen2.5-VL."""

from __future__ import annotations

import dataclasses

from pgen_jax.errors import ConfigError
from pgen_jax.rewards import clip, dino
from pgen_jax.rewards.models import random_preset
from pgen_jax.sections import Section, at_least


@dataclasses.dataclass(frozen=True)
class RewardModelsSection(Section):
  where = "reward_models"
  clip: str               # CLIP directory (transformers or open_clip), or random:<preset>
  dino: str               # DINOv2 directory, or random:<preset>
  dino_size: int          # DINO input side (positions resampled to it)
  lpips_vgg: str          # torchvision VGG16 weights
  lpips_heads: str        # lpips' weights/v0.1/vgg.pth
  scorer_url: str         # the scorer process (NIMA, Qwen2.5-VL profile judge)
  scorer_token: str
  scorer_nima: str        # NIMA weights, for a scorer this job starts
  scorer_qwen: str        # Qwen2.5-VL directory, for a scorer this job starts
  scorer_start: bool      # start one when the scorer terms have weight and none answers
  scorer_device: str      # torch device of a started scorer; "": cuda when present, else cpu

  def check(self) -> None:
    at_least(self, 1, "dino_size")
    try:  # an unknown random:<preset>
      random_preset(self.clip, clip.PRESETS, self.key("clip"))
      random_preset(self.dino, dino.PRESETS, self.key("dino"))
    except ValueError as e:
      raise ConfigError(str(e)) from None
