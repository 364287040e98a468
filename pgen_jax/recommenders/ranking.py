"""Ranked lists from scores, and the ranking metrics of a list against the target item."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, history: np.ndarray, k: int, popularity: np.ndarray | None = None) -> np.ndarray:
  """(B, k) item indices by descending score, the row's history items excluded. scores (B, I), history (B, h)
  item indices. Ties go to the more popular item (popularity (I,): training users per item), then to the
  lower index: a recommender with nothing to say (an unseen last item) falls back to popularity."""
  s = np.array(scores, np.float64, copy=True)
  np.put_along_axis(s, history, -np.inf, axis=1)
  k = min(k, s.shape[1] - history.shape[1])
  pop = np.zeros(s.shape[1]) if popularity is None else np.asarray(popularity, np.float64)
  order = np.lexsort((np.broadcast_to(-pop, s.shape), -s), axis=1)  # stable: full ties keep the lower index
  return order[:, :k]


def rank_of(ranked: np.ndarray, target: np.ndarray) -> np.ndarray:
  """0-based position of each row's target in its list, or -1 when absent."""
  hit = ranked == np.asarray(target)[:, None]
  return np.where(hit.any(1), hit.argmax(1), -1)


def hit_rate(ranked: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
  """Per row: 1 when the target is in the first k."""
  r = rank_of(ranked[:, :k], target)
  return (r >= 0).astype(np.float64)


def ndcg(ranked: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
  """Per row: 1 / log2(rank + 2) for a target at 0-based rank < k, else 0 (one relevant item)."""
  r = rank_of(ranked[:, :k], target)
  return np.where(r >= 0, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)


def ranking_metrics(ranked: np.ndarray, target: np.ndarray, ks=(1, 10)) -> dict[str, float]:
  out = {}
  for k in ks:
    out[f"hr@{k}"] = float(hit_rate(ranked, target, k).mean())
    out[f"ndcg@{k}"] = float(ndcg(ranked, target, k).mean())
  return out
