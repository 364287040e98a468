"""Reward terms computed inside the jitted step, and their weighted combination.

Terms (each (N,) for N generated images; similarities are 100 x cosine):
  clip_history  CLIP image similarity to the mean of the history's (normalised) embeddings
  clip_target   CLIP image similarity to the target item's image
  clip_future   mean CLIP image similarity to the future items' images
  clip_text     CLIP similarity of the image to the target item's text
  dino_history / dino_target / dino_future   the same with DINO features
  ssim_target   SSIM to the target image (data range 255)
  lpips_target  minus the LPIPS-VGG distance to the target image (higher is more similar)
  profile, nima from the external scorer (passed in, not computed here)
Only terms with a non-zero weight are computed. With normalize="batch" each term is standardised
over the batch before weighting, so weights compare terms of different scales; raw terms are
returned as well, for logging.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pgen_jax.rewards.clip import normalize as unit
from pgen_jax.rewards.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, preprocess, ssim

IN_JIT = ("clip_history", "clip_target", "clip_future", "clip_text", "dino_history", "dino_target", "dino_future",
          "ssim_target", "lpips_target")
EXTERNAL = ("profile", "nima")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  weights: tuple[tuple[str, float], ...] = (("clip_history", 1.0), ("clip_future", 1.0), ("dino_target", 0.5))
  normalize: str = "batch"    # none | batch
  clip_size: int = 224
  dino_resize: int = 256
  dino_crop: int = 224

  def __post_init__(self):
    for name, _ in self.weights:
      if name not in IN_JIT + EXTERNAL:
        raise ValueError(f"reward term {name!r} unknown; choose from {IN_JIT + EXTERNAL}")
    if self.normalize not in ("none", "batch"):
      raise ValueError(f"reward normalize {self.normalize!r}: use 'none' or 'batch'")

  @property
  def active(self) -> dict[str, float]:
    return {k: w for k, w in self.weights if w}


def _sim(a, b):
  return 100.0 * jnp.sum(unit(a) * unit(b), -1)


def _flat(images):  # (N, m, S, S, 3) -> (N*m, S, S, 3)
  return images.reshape(-1, *images.shape[2:])


def in_jit_terms(cfg: RewardConfig, generated, *, history=None, target=None, future=None, target_text=None,
                 clip=None, dino=None, lpips=None) -> dict[str, jnp.ndarray]:
  """Raw reward terms for uint8 images: generated (N, S, S, 3), history (N, k, ...), future (N, p, ...),
  target (N, S, S, 3), target_text (N, L) CLIP token ids."""
  want = [t for t in cfg.active if t in IN_JIT]
  n = generated.shape[0]
  out = {}
  if any(t.startswith("clip") for t in want):
    clip_in = lambda x: preprocess(x, cfg.clip_size, cfg.clip_size, CLIP_MEAN, CLIP_STD)
    g = clip.get_image_features(clip_in(generated))
    if "clip_history" in want:
      h = unit(clip.get_image_features(clip_in(_flat(history)))).reshape(n, history.shape[1], -1)
      out["clip_history"] = _sim(g, h.mean(1))
    if "clip_target" in want:
      out["clip_target"] = _sim(g, clip.get_image_features(clip_in(target)))
    if "clip_future" in want:
      f = clip.get_image_features(clip_in(_flat(future))).reshape(n, future.shape[1], -1)
      out["clip_future"] = _sim(g[:, None], f).mean(1)
    if "clip_text" in want:
      out["clip_text"] = _sim(g, clip.get_text_features(target_text))
  if any(t.startswith("dino") for t in want):
    dino_in = lambda x: preprocess(x, cfg.dino_resize, cfg.dino_crop, IMAGENET_MEAN, IMAGENET_STD)
    g = dino(dino_in(generated))
    if "dino_history" in want:
      h = unit(dino(dino_in(_flat(history)))).reshape(n, history.shape[1], -1)
      out["dino_history"] = _sim(g, h.mean(1))
    if "dino_target" in want:
      out["dino_target"] = _sim(g, dino(dino_in(target)))
    if "dino_future" in want:
      out["dino_future"] = _sim(g[:, None], dino(dino_in(_flat(future))).reshape(n, future.shape[1], -1)).mean(1)
  if "ssim_target" in want:
    out["ssim_target"] = ssim(generated, target)
  if "lpips_target" in want:
    signed = lambda x: x.astype(jnp.float32) / 127.5 - 1.0
    out["lpips_target"] = -lpips(signed(generated), signed(target))
  return out


def combine(cfg: RewardConfig, terms: dict[str, jnp.ndarray]) -> jnp.ndarray:
  """Weighted sum of the active terms (standardised over the batch when normalize='batch')."""
  missing = [t for t in cfg.active if t not in terms]
  if missing:
    raise ValueError(f"reward terms {missing} have weights but were not computed/provided")
  total = 0.0
  for name, w in cfg.active.items():
    x = terms[name].astype(jnp.float32)
    if cfg.normalize == "batch":
      x = (x - x.mean()) / (x.std() + 1e-6)
    total = total + w * x
  return total
