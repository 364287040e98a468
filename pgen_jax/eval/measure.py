"""The evaluation's metric models, apart from the reward's (eval.clip / eval.dino, default the reward's
reward_models.clip / .dino, with a warning), run jitted in fixed-size chunks so each shape compiles once. Images
are embedded as the rewards embed them (rewards.similarity.ImageEncoder)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from pgen_jax.rewards.compose import RewardConfig, in_jit_terms
from pgen_jax.rewards.hf import tokenize
from pgen_jax.rewards.models import frozen_jit
from pgen_jax.rewards.section import RewardModelsSection


def metric_model_section(cfg) -> RewardModelsSection:
  """The reward_models section with eval.clip / eval.dino in place of the reward's models."""
  models, eval_cfg = cfg.reward_models, cfg.eval
  for key in ("clip", "dino"):
    if not getattr(eval_cfg, key) and getattr(models, key):
      logging.warning("eval.%s is empty: measuring with the reward's model reward_models.%s = %s, which GRPO "
                      "optimised; set eval.%s to an independent model", key, key, getattr(models, key), key)
  return dataclasses.replace(models, clip=eval_cfg.clip or models.clip, dino=eval_cfg.dino or models.dino)


@nnx.jit
def _clip_text(clip, ids):
  return clip.get_text_features(ids)


@nnx.jit
def _pairs(lpips, a, b):
  """a (W, N, S, S, 3) images, b (W, S, S, 3) their windows' targets -> {ssim_target, lpips_target (the
  distance)}: (W, N) each, by the reward's code (each target through LPIPS's VGG once)."""
  w, n = a.shape[:2]
  cfg = RewardConfig(weights=(("ssim_target", 1.0),) + ((("lpips_target", 1.0),) if lpips is not None else ()))
  terms = in_jit_terms(cfg, a.reshape(w * n, *a.shape[2:]), target=b, lpips=lpips)
  return {k: (-v if k == "lpips_target" else v).reshape(w, n) for k, v in terms.items()}


def _chunked(fn, arrays, chunk: int):
  """fn over the first axis in chunks of `chunk` rows, the last one padded (one compiled shape)."""
  n = len(arrays[0])
  outs = []
  for i in range(0, n, chunk):
    part = [a[i:i + chunk] for a in arrays]
    pad = chunk - len(part[0])
    if pad:
      part = [np.concatenate([p, np.repeat(p[-1:], pad, 0)]) for p in part]
    out = fn(*[jnp.asarray(p) for p in part])
    outs.append(jax_to_numpy(out, chunk - pad))
  if isinstance(outs[0], dict):
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  return np.concatenate(outs)


def jax_to_numpy(out, keep: int):
  if isinstance(out, dict):
    return {k: np.asarray(v)[:keep] for k, v in out.items()}
  return np.asarray(out)[:keep]


class MetricModels:
  """CLIP / DINO image embeddings and SSIM / LPIPS of uint8 image pairs; `models` a RewardModels."""

  def __init__(self, models, chunk: int = 32, tokenizer=None):
    self.m, self.chunk, self.tokenizer = models, chunk, tokenizer
    self._embedders = {}

  @property
  def has_clip(self):
    return self.m.clip is not None

  @property
  def has_dino(self):
    return self.m.dino is not None

  def embedder(self, kind: str):
    """(fn, state): the jitted fn(state, images) -> embeddings that clip() and dino() run on each chunk of
    `chunk` uint8 images, and the model's state; bench.memory lowers the same."""
    if kind not in self._embedders:
      self._embedders[kind] = frozen_jit(self.m.encoder(kind), getattr(self.m, kind))
    return self._embedders[kind]

  def _embeddings(self, kind: str, images: np.ndarray) -> np.ndarray:
    fn, state = self.embedder(kind)
    return _chunked(lambda x: fn(state, x), [images], self.chunk)

  def clip(self, images: np.ndarray) -> np.ndarray:
    return self._embeddings("clip", images)

  @property
  def has_text(self):
    return self.has_clip and self.tokenizer is not None

  def text(self, texts: list[str]) -> np.ndarray:
    """CLIP text embeddings (len(texts), D), open_clip's tokenization cut to the model's context."""
    ids = tokenize(texts, self.tokenizer, self.m.clip.config.text.max_position_embeddings)
    return _chunked(lambda x: _clip_text(self.m.clip, x), [ids], self.chunk)

  def dino(self, images: np.ndarray) -> np.ndarray:
    return self._embeddings("dino", images)

  def pairs(self, images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """ssim_target and, with LPIPS configured, lpips_target (the distance) of images (W, N, S, S, 3) to their
    window's target (W, S, S, 3): {name: (W, N)}."""
    return _chunked(lambda x, y: _pairs(self.m.lpips, x, y), [images, targets], max(1, self.chunk // images.shape[1]))
