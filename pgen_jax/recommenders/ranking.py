"""Ranked lists from scores, and the ranking metrics of a list against the target item."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
  """(B, k) item indices by descending score, ties by lower index, the row's history items excluded.
  scores (B, I), history (B, h) item indices."""
  s = np.array(scores, np.float64, copy=True)
  np.put_along_axis(s, history, -np.inf, axis=1)
  k = min(k, s.shape[1] - history.shape[1])
  order = np.argsort(-s, axis=1, kind="stable")  # stable: ties keep the lower index first
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
