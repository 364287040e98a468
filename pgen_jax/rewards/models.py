"""The frozen reward/metric models a run configures (reward_models.clip, .dino, .lpips_*), loaded onto the mesh,
and the jitted function that computes the in-process terms of pgen_jax.rewards.compose with them. Shared by
the GRPO rewards and the eval stage, so both measure images the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from pgen_jax.models import place_on_mesh
from pgen_jax.rewards import clip as clip_lib, dino as dino_lib
from pgen_jax.rewards.compose import RewardConfig, in_jit_terms
from pgen_jax.rewards.hf import load_clip, load_dino, load_lpips
from pgen_jax.rewards.similarity import ImageEncoder


def frozen_jit(fn, *modules):
  """(jitted, states): fn(*modules, *args) as a jitted function of the frozen modules' states, jitted(states,
  *args) (None for an absent module), and those states; a plain jax.jit, so its program can be lowered on
  abstract states (bench.memory) and called on their random stand-ins."""
  graphdefs, states = zip(*(nnx.split(m) if m is not None else (None, None) for m in modules))

  def run(states, *args):
    return fn(*(None if g is None else nnx.merge(g, s) for g, s in zip(graphdefs, states)), *args)
  return jax.jit(run), states


@dataclasses.dataclass
class RewardModels:
  clip: object = None
  dino: object = None
  lpips: object = None
  dino_size: int = 224

  def config(self, weights, normalize: str = "none") -> RewardConfig:
    """A RewardConfig with each model's input size: CLIP its native one, DINO dino_size after a 256/224 resize."""
    return RewardConfig(weights=tuple(weights), normalize=normalize, clip_size=self.clip_size,
                        dino_crop=self.dino_size, dino_resize=round(self.dino_size * 256 / 224))

  def encoder(self, kind: str) -> ImageEncoder:
    """How "clip" or "dino" embeds images at these models' sizes (the rewards' and eval's alike)."""
    return self.config(()).encoder(kind)

  @property
  def clip_size(self) -> int:
    return self.clip.config.vision.image_size if self.clip is not None else 224

  def jitted_terms(self, rcfg: RewardConfig):
    """(fn, states): terms_fn's jitted fn(states, data) -> {term: (B x G,)} and the models' states; bench.memory
    lowers the same on abstract states."""
    return frozen_jit(lambda clip, dino, lpips, d: in_jit_terms(
        rcfg, d["generated"], history=d.get("history"), target=d.get("target"), future=d.get("future"),
        target_text=d.get("target_text"), clip=clip, dino=dino, lpips=lpips), self.clip, self.dino, self.lpips)

  def terms_fn(self, rcfg: RewardConfig):
    """{"generated" (B x G, ...), "history", "target"[, "future", "target_text"] (B, ...)} -> {term: (B x G,)}:
    uint8 images, the references once per prompt, a prompt's G samples adjacent (in_jit_terms)."""
    fn, states = self.jitted_terms(rcfg)
    return lambda data: {k: np.asarray(v) for k, v in fn(states, data).items()}

  def embeddings(self, images: np.ndarray) -> np.ndarray:
    """CLIP image embeddings (N, D) of uint8 images; without CLIP, the flattened pixels."""
    if self.clip is None:
      return images.reshape(len(images), -1).astype(np.float32)
    return np.asarray(self.encoder("clip")(self.clip, jnp.asarray(images)))


RANDOM = "random:"  # reward_models.clip / reward_models.dino = "random:<preset>": random weights of that architecture


def random_preset(spec: str, presets: dict, key: str):
  """The preset a "random:<name>" spec names (None for a path); an unknown name is a ValueError naming `key`."""
  if not spec.startswith(RANDOM):
    return None
  name = spec[len(RANDOM):]
  if name not in presets:
    raise ValueError(f"{key}: {spec!r}; random presets are {', '.join(RANDOM + p for p in presets)}")
  return presets[name]


def load_reward_models(section, mesh, dtype) -> RewardModels:
  """The models a RewardModelsSection names (clip, dino, lpips_vgg + lpips_heads): directories of weights,
  or "random:<preset>" for random weights at a real shape (benchmarks)."""
  kw = dict(mesh=mesh, dtype=dtype, param_dtype=dtype)
  out = RewardModels(dino_size=section.dino_size)
  if random_preset(section.clip, clip_lib.PRESETS, "reward_models.clip"):
    logging.warning("reward_models.clip is %s: random CLIP weights, for timing only", section.clip)
    out.clip = place_on_mesh(clip_lib.CLIP(random_preset(section.clip, clip_lib.PRESETS, "reward_models.clip"), nnx.Rngs(0),
                                           dtype=dtype, param_dtype=dtype), mesh)
  elif section.clip:
    out.clip = load_clip(section.clip, **kw)
  if random_preset(section.dino, dino_lib.PRESETS, "reward_models.dino"):
    logging.warning("reward_models.dino is %s: random DINO weights, for timing only", section.dino)
    dino_config = dataclasses.replace(random_preset(section.dino, dino_lib.PRESETS, "reward_models.dino"),
                                      image_size=section.dino_size)
    out.dino = place_on_mesh(dino_lib.Dino(dino_config, nnx.Rngs(1), dtype=dtype, param_dtype=dtype), mesh)
  elif section.dino:
    out.dino = load_dino(section.dino, image_size=section.dino_size, **kw)
  if section.lpips_vgg:
    out.lpips = load_lpips(section.lpips_vgg, section.lpips_heads, **kw)
  return out
