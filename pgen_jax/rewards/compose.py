"""Reward terms computed inside the jitted step, and their weighted combination.

Terms (each (N,) for N generated images; references per prompt, see in_jit_terms) and their scales:
  clip_history  100 x cosine of the CLIP image embedding and the mean of the history's unit embeddings
                (-100..100; real CLIP puts related images around 50-80)
  clip_target   100 x cosine to the target item's image
  clip_future   mean 100 x cosine to the future items' images
  clip_text     100 x cosine of the image and the target item's text
  dino_history / dino_target / dino_future   the same with DINO features (100 x cosine)
  ssim_target   SSIM to the target image (data range 255): -1..1, 1 = identical
  lpips_target  minus the LPIPS-VGG distance to the target image: about -1..0, 0 = identical
  profile       the scorer's judge: how well the image fits the user's profile, 0..1
  nima          the scorer's NIMA aesthetic score, mean of its 1..10 distribution
  fixed         (tests only) a deliberately hackable term: the share of image tokens drawn from one fixed
                image's few codes, 0..1, computed by the trainer from the tokens; the same image wins
                for every user, which the hacking defence must catch
The embeddings and the similarity formulas are pgen_jax.rewards.similarity's, which eval measures with too.
Only terms with a non-zero weight are computed. The total is the weighted sum of these raw terms, so
its level means something from step to step (the logged reward_mean). normalize="running" divides
each term by a running estimate of its spread WITHIN groups (RunningScale) before weighting, so that
weights compare how strongly each term separates one history's samples; the terms are not centred,
so the level stays visible. A per-batch z-score is deliberately not offered: it fixes the total's
mean at 0 and its spread at 1 every step, which hides both progress and collapse.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from pgen_jax.models.janus import from_uint8
from pgen_jax.rewards.image_ops import ssim
from pgen_jax.rewards.similarity import ImageEncoder, to_each, to_history, to_reference

IN_JIT = ("clip_history", "clip_target", "clip_future", "clip_text", "dino_history", "dino_target", "dino_future",
          "ssim_target", "lpips_target")
EXTERNAL = ("profile", "nima")
HACKABLE = ("fixed",)  # tests: the share of image tokens from one fixed image's few codes (0..1), from the trainer
NORMALIZE = ("none", "running")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  weights: tuple[tuple[str, float], ...] = (("clip_history", 1.0), ("clip_future", 1.0), ("dino_target", 0.5))
  normalize: str = "none"     # none | running (see the module docstring)
  clip_size: int = 224
  dino_resize: int = 256
  dino_crop: int = 224

  def __post_init__(self):
    for name, _ in self.weights:
      if name not in IN_JIT + EXTERNAL + HACKABLE:
        raise ValueError(f"reward term {name!r} unknown; choose from {IN_JIT + EXTERNAL + HACKABLE}")
    if self.normalize not in NORMALIZE:
      raise ValueError(f"reward normalize {self.normalize!r}: use one of {NORMALIZE}")

  @property
  def active(self) -> dict[str, float]:
    return {k: w for k, w in self.weights if w}

  def encoder(self, kind: str) -> ImageEncoder:
    """How "clip" or "dino" embeds images at this config's sizes."""
    return ImageEncoder("clip", self.clip_size, self.clip_size) if kind == "clip" else \
        ImageEncoder("dino", self.dino_crop, self.dino_resize)


def group_size(n: int, references: dict) -> int:
  """G for n generated images and per-prompt references {name: (B, ...) or None}: n = B x G, a prompt's G
  samples adjacent; B = n (one reference set per image) is G = 1."""
  rows = {k: v.shape[0] for k, v in references.items() if v is not None}
  b = set(rows.values())
  if len(b) > 1 or (b and n % min(b)):
    raise ValueError(f"reward references {rows} must share one row count B (one per prompt) that divides the "
                     f"{n} generated images (B prompts x G samples, a prompt's samples adjacent)")
  return n // b.pop() if b else 1


def _encode(model, encoder: ImageEncoder, generated, references: dict):
  """generated (N, S, S, 3) and the reference images {name: (B, [m,] S, S, 3)} through one encoder call, each
  image once -> (N, D), {name: (B, [m,] D)}. One call, not one per kind: XLA then keeps no buffers alive
  between calls of the same shape (on CPU it shared their bias broadcasts, ~10x the temporaries), and an
  accelerator gets one larger batch."""
  parts = [generated, *references.values()]
  emb = encoder(model, jnp.concatenate([x.reshape(-1, *x.shape[-3:]) for x in parts]))
  sizes = np.cumsum([math.prod(x.shape[:-3]) for x in parts])[:-1]
  g, *refs = [e.reshape(*x.shape[:-3], -1) for x, e in zip(parts, jnp.split(emb, sizes))]
  return g, dict(zip(references, refs))


def _image_terms(prefix: str, want, g, refs: dict) -> dict:
  """100 x cosines of g (B, G, D) to the per-prompt reference embeddings {history (B, k, D), target (B, D),
  future (B, p, D)} -> {term: (B, G)}."""
  out = {}
  if f"{prefix}_history" in want:
    out[f"{prefix}_history"] = to_history(g, refs["history"])
  if f"{prefix}_target" in want:
    out[f"{prefix}_target"] = to_reference(g, refs["target"])
  if f"{prefix}_future" in want:
    out[f"{prefix}_future"] = to_each(g, refs["future"]).mean(-1)
  return out


def in_jit_terms(cfg: RewardConfig, generated, *, history=None, target=None, future=None, target_text=None,
                 clip=None, dino=None, lpips=None) -> dict[str, jnp.ndarray]:
  """Raw reward terms {term: (N,)} for N = B x G uint8 images generated (N, S, S, 3), prompt b's G samples in
  rows b*G .. b*G+G-1 (the sampler's order), against each prompt's references: history (B, k, S, S, 3),
  target (B, S, S, 3), future (B, p, S, S, 3), target_text (B, L) CLIP token ids. Each reference image
  is encoded once per call and its embedding shared by the prompt's G samples (G = N // B; references
  with N rows, one set per image, are G = 1)."""
  want = [t for t in cfg.active if t in IN_JIT]
  n = generated.shape[0]
  images = {"history": history, "target": target, "future": future}
  g_size = group_size(n, {**images, "target_text": target_text})
  per_prompt = lambda x: x.reshape(n // g_size, g_size, *x.shape[1:])  # (N, ...) -> (B, G, ...)
  out = {}
  needs = lambda prefix: {k: v for k, v in images.items() if f"{prefix}_{k}" in want}
  if any(t.startswith("clip") for t in want):
    g, refs = _encode(clip, cfg.encoder("clip"), generated, needs("clip"))
    out.update(_image_terms("clip", want, per_prompt(g), refs))
    if "clip_text" in want:
      out["clip_text"] = to_reference(per_prompt(g), clip.get_text_features(target_text))
  if any(t.startswith("dino") for t in want):
    g, refs = _encode(dino, cfg.encoder("dino"), generated, needs("dino"))
    out.update(_image_terms("dino", want, per_prompt(g), refs))
  if "ssim_target" in want:  # pixels: nothing to encode
    out["ssim_target"] = ssim(generated, jnp.repeat(target, g_size, 0))
  if "lpips_target" in want:  # the target's VGG features once, compared with each of its G samples' (one call)
    maps = lpips.unit_maps(from_uint8(jnp.concatenate([generated, target])))
    out["lpips_target"] = -lpips.distance([per_prompt(x[:n]) for x in maps], [x[n:, None] for x in maps])
  return {k: v.reshape(n) for k, v in out.items()}


def combine(cfg: RewardConfig, terms: dict, scales: dict | None = None):
  """Weighted sum of the active raw terms; with `scales` ({term: spread}, from RunningScale) each
  term is divided by its spread first (not centred, so the level stays)."""
  missing = [t for t in cfg.active if t not in terms]
  if missing:
    raise ValueError(f"reward terms {missing} have weights but were not computed/provided")
  total = 0.0
  for name, w in cfg.active.items():
    x = terms[name].astype(jnp.float32)
    if scales is not None:
      x = x / scales[name]
    total = total + w * x
  return total


class RunningScale:
  """Per term, an exponential moving average (decay `decay`) of its mean within-group standard
  deviation: the spread a term shows between the G samples of one history, which is what GRPO's
  group advantages see. Host-side numpy; its state goes into the run's checkpoint."""

  def __init__(self, decay: float = 0.9, floor: float = 1e-6):
    self.decay, self.floor, self.spread = decay, floor, {}

  def update(self, terms: dict, group_size: int) -> dict[str, float]:
    """Folds this batch in and returns {term: scale} to divide by (the batch itself included)."""
    for name, x in terms.items():
      s = float(np.asarray(x, np.float64).reshape(-1, group_size).std(1).mean())
      old = self.spread.get(name)
      self.spread[name] = s if old is None else self.decay * old + (1 - self.decay) * s
    return {k: max(v, self.floor) for k, v in self.spread.items()}

  def state(self) -> dict:
    return dict(self.spread)

  def restore(self, state: dict) -> None:
    self.spread = {k: float(v) for k, v in state.items()}
