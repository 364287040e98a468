"""The metric code every row of the comparison goes through: per-image values for N images per window
from their embeddings (CLIP, DINO), pixels (SSIM, LPIPS) and the window's items.

Names (all similarities 100 x cosine; one value per image):
  cis_target, dis_target       CLIP / DINO image similarity to the target item's image
  cts                          CLIP image-text similarity to the target's text (title | genres), when
                               the CLIP directory has its tokenizer
  cis_history, dis_history     to the mean of the history's unit embeddings
  cis_history_items, dis_...   Pigeon's: the mean of the per-item cosines to the history
  cis_future, dis_future       the mean over the p future items; *_future_max their max
  ssim_target, lpips_target    SSIM (data range 255) and LPIPS distance to the target (lower better)
  cross_user                   mean cosine (CLIP, x 100) to the images of other users' windows (lower
                               better: more personal)
  genre_hit                    synthetic world: the image's genre (a classifier on its VQ tokens) is
                               the user's preferred one
  pixel_genre_hit              the same read off the pixels (nearest signature by colour and stripes)
  pixel_margin                 the world's graded judgement (the demo's GRPO reward, synthetic.signature_margin):
                               how much nearer the image is to the user's genre's signature than to the average's
  nima, profile                from the scorer, when one is configured
The formulas are pgen_jax.rewards.similarity's, the GRPO rewards' own; numpy inputs run in float64.
"""

from __future__ import annotations

import numpy as np

from pgen_jax.rewards import similarity as S
from pgen_jax.sampling import per_sample

LOWER_IS_BETTER = frozenset({"lpips_target", "cross_user"})
VERSION = 2  # part of eval's setup digest: rows saved before a metric was added or changed are redone


def image_similarities(prefix: str, g, history, target, future=None) -> dict[str, np.ndarray]:
  """g (W, N, D) image embeddings; history (W, h, D), target (W, D), future (W, p, D) -> {name: (W, N)}."""
  out = {f"{prefix}_target": S.to_reference(g, target),
         f"{prefix}_history": S.to_history(g, history),
         f"{prefix}_history_items": S.to_each(g, history).mean(-1)}
  if future is not None and future.shape[1]:
    f = S.to_each(g, future)
    out[f"{prefix}_future"] = f.mean(-1)
    out[f"{prefix}_future_max"] = f.max(-1)
  return out


def text_similarity(g, text) -> np.ndarray:
  """g (W, N, D) CLIP image embeddings, text (W, D) CLIP text embeddings -> cts (W, N)."""
  return S.to_reference(g, text)


def cross_user(g, users) -> np.ndarray:
  """g (W, N, D), users (W,) -> (W, N): each image's mean cosine x 100 to the images of other users."""
  w, n = g.shape[:2]
  flat = np.asarray(g).reshape(w * n, -1)
  return 100.0 * S.similarity_to_other_users(flat, per_sample(np.asarray(users), n)).reshape(w, n)
