"""Image-set similarity that training and evaluation both measure: how alike the images generated
for DIFFERENT users are (GRPO's diversity penalty and reward-hacking signal, eval's cross_user).

Host-side numpy in float64 on (N, D) embeddings and (N,) user ids.
"""

from __future__ import annotations

import numpy as np


def unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _other_user_cosines(embeddings, users) -> tuple[np.ndarray, np.ndarray]:
  """(N, N) cosine similarities, zero where both images are of one user, and the other-user mask."""
  e = unit(embeddings)
  u = np.asarray(users)
  other = u[:, None] != u[None, :]
  return np.where(other, e @ e.T, 0.0), other


def similarity_to_other_users(embeddings, users) -> np.ndarray:
  """Per image: its mean cosine similarity to the images of other users (GRPO subtracts it from the
  reward as the diversity penalty)."""
  sim, other = _other_user_cosines(embeddings, users)
  return sim.sum(1) / np.maximum(other.sum(1), 1)


def cross_user_similarity(embeddings, users) -> float:
  """Mean cosine similarity over all pairs of images generated for different users."""
  sim, other = _other_user_cosines(embeddings, users)
  return float(sim.sum() / max(int(other.sum()), 1))
