"""The similarity library below training and evaluation: image embeddings (with an item cache) and the
similarity formulas, written once. GRPO's rewards (rewards.compose, in jit; train.grpo_rewards, on the
host) and eval (eval.metrics, eval.evaluate) both call these.

Formulas: each takes embeddings with the images to score as g (..., N, D) and the references of
their row; all but the cross-user ones are 100 x cosine.
  cosine                     row by row: a (..., D), b (..., D) -> (...), broadcasting
  to_reference               to one reference per row (..., D): the target's image, or its text (CTS)
  to_history                 to the mean of the history's unit embeddings (..., k, D)
  to_each                    to each of m references (..., m, D) -> (..., N, m): its mean over the
                             history is Pigeon's per-item history term, its mean / max over the future
                             items those terms
  similarity_to_other_users  per image, the mean cosine (-1..1, not x 100: GRPO's diversity penalty and
                             hacking monitor read it on that scale) to the images of other users
  cross_user_similarity      the mean of that cosine over all pairs of images of different users

jax arrays (tracers included) are computed with jax.numpy, so the formulas run inside jit; anything
else with numpy in float64, as eval's statistics want.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pgen_jax.rewards.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, preprocess


def _xp(*arrays):
  # jax.Array covers tracers too: inside jit every input is one, so the formulas trace with jnp
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def unit(x):
  """x / |x| along the last axis (floored at 1e-12, as torch's F.normalize)."""
  xp = _xp(x)
  x = x if xp is jnp else np.asarray(x, np.float64)
  return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(a, b):
  """100 x cosine of a (..., D) and b (..., D) along the last axis, broadcasting."""
  return 100.0 * (unit(a) * unit(b)).sum(-1)


def to_reference(g, ref):
  """g (..., N, D), ref (..., D) -> (..., N)."""
  return cosine(g, ref[..., None, :])


def to_each(g, refs):
  """g (..., N, D), refs (..., m, D) -> (..., N, m)."""
  xp = _xp(g, refs)
  return 100.0 * xp.einsum("...nd,...md->...nm", unit(g), unit(refs))


def to_history(g, history):
  """g (..., N, D), history (..., k, D) -> (..., N): to the mean of the unit history embeddings, so each
  history item weighs the same whatever its embedding's norm."""
  return to_reference(g, unit(history).mean(-2))


def _other_user_cosines(embeddings, users):
  """(N, N) cosines, zero where both images are of one user, and the other-user mask."""
  xp = _xp(embeddings, users)
  e = unit(embeddings)
  u = xp.asarray(users)
  other = u[:, None] != u[None, :]
  return xp.where(other, e @ e.T, 0.0), other


def similarity_to_other_users(embeddings, users):
  """embeddings (N, D), users (N,) -> (N,): each image's mean cosine to the images of other users."""
  xp = _xp(embeddings, users)
  sim, other = _other_user_cosines(embeddings, users)
  return sim.sum(1) / xp.maximum(other.sum(1), 1)


def cross_user_similarity(embeddings, users):
  """The mean cosine over all pairs of images of different users (a scalar)."""
  xp = _xp(embeddings, users)
  sim, other = _other_user_cosines(embeddings, users)
  return sim.sum() / xp.maximum(other.sum(), 1)


@dataclasses.dataclass(frozen=True)
class ImageEncoder:
  """How a model embeds uint8 images (n, S, S, 3) -> (n, D) float32, in jit or eagerly: CLIP's image
  features at `crop` (its native size), or DINO's CLS feature after a `resize` then centre `crop`, each
  with its own normalisation. Frozen and hashable: a static argument of jit."""
  kind: str    # clip | dino
  crop: int
  resize: int

  def __call__(self, model, images):
    if self.kind == "clip":
      return model.get_image_features(preprocess(images, self.resize, self.crop, CLIP_MEAN, CLIP_STD))
    return model(preprocess(images, self.resize, self.crop, IMAGENET_MEAN, IMAGENET_STD)).astype(jnp.float32)


class ItemCache:
  """Embeddings of catalog items by index, each item encoded once: encode(uint8 (n, S, S, 3)) -> (n, D),
  images(indices (n,)) -> their uint8 images."""

  def __init__(self, encode, images):
    self.encode, self.images, self.cache = encode, images, {}

  def __call__(self, idx) -> np.ndarray:
    """(*idx.shape, D) embeddings of the items `idx`; only the ones not seen before are encoded (one call)."""
    idx = np.asarray(idx)
    todo = [int(i) for i in np.unique(idx) if int(i) not in self.cache]
    if todo:
      self.cache.update(zip(todo, np.asarray(self.encode(self.images(np.array(todo))))))
    return np.stack([self.cache[int(i)] for i in idx.reshape(-1)]).reshape(*idx.shape, -1)
