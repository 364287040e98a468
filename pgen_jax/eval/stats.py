"""Summaries of per-image metric values (W windows x N images): the single-sample mean, best-of-N, 95%
bootstrap intervals over windows, and paired differences between methods on the same windows.

Bootstrap: `resamples` draws of W windows with replacement, the same draws (one seeded index matrix)
for every method and metric, so differences are paired; the interval is the 2.5th and 97.5th
percentile of the resampled means.
"""

from __future__ import annotations

import numpy as np


def per_window(values: np.ndarray, best: bool, higher_is_better: bool = True) -> np.ndarray:
  """(W, N) -> (W,): the mean over the N images, or the best of them (max, or min when lower is better)."""
  v = np.asarray(values, np.float64)
  if not best:
    return v.mean(1)
  return v.max(1) if higher_is_better else v.min(1)


def bootstrap_indices(windows: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
  """(resamples, windows) window indices drawn with replacement."""
  return np.random.default_rng(seed).integers(0, windows, (resamples, windows))


def interval(per_win: np.ndarray, idx: np.ndarray) -> tuple[float, float, float]:
  """(mean, low, high): the mean over windows and its 95% percentile bootstrap interval."""
  means = np.asarray(per_win, np.float64)[idx].mean(1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  return float(np.mean(per_win)), float(lo), float(hi)


def paired_difference(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> tuple[float, float, float]:
  """Mean of a - b over the same windows with its 95% bootstrap interval."""
  return interval(np.asarray(a, np.float64) - np.asarray(b, np.float64), idx)
