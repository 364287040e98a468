"""Per-user chronological sequences, sliding windows and time-based splits.

A window is history_len items, then the target, then future_len future items, consecutive in the
user's positive history. Windows slide by `stride`. Per user, the last `test_windows` windows
(by target time) are test, the `val_windows` before them validation, the rest training; the
`holdout_users` users (chosen by a stable hash of the id) are test only. Training
windows whose future items reach a validation/test target are dropped (when `strict_future`), so
no evaluation target is ever seen in training, as target or as future.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import numpy as np

from pgen_jax.data.tables import Interactions

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  history_len: int = 5       # k-1: the paper's setting and Pigeon's windows of 6
  future_len: int = 3        # p
  stride: int = 1
  min_rating: float | None = 4.0  # positives: rating >= this; None keeps every interaction
  test_windows: int = 1
  val_windows: int = 1
  strict_future: bool = True
  holdout_users: int = 0     # users whose every window is test (never seen in training)

  @property
  def length(self) -> int:
    return self.history_len + 1 + self.future_len


@dataclasses.dataclass
class Windows:
  """Per split: users (W,), items (W, length) item ids: history, target, future."""
  users: dict[str, np.ndarray]
  items: dict[str, np.ndarray]
  stats: dict


def sequences(inter: Interactions, cfg: WindowConfig, usable: set[int], counts: collections.Counter):
  """{user: item ids in time order} of positive interactions with a usable item (image present)."""
  keep = np.ones(len(inter), bool)
  if cfg.min_rating is not None:  # implicit feedback (NaN rating) is always positive
    keep &= (inter.rating >= cfg.min_rating) | np.isnan(inter.rating)
    counts["not_positive"] += int((~keep).sum())
  has = np.isin(inter.item, np.fromiter(usable, np.int64, len(usable)))
  counts["item_without_image"] += int((keep & ~has).sum())
  keep &= has
  u, i, t = inter.user[keep], inter.item[keep], inter.timestamp[keep]
  order = np.lexsort((np.arange(len(u)), t, u))  # by user, then time, ties in file order
  out = {}
  for user, items in zip(*_groups(u[order], i[order])):
    out[int(user)] = items
  return out


def _groups(keys, values):
  if len(keys) == 0:
    return [], []
  cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
  return keys[np.r_[0, cuts]], np.split(values, cuts)


def make_windows(seqs: dict[int, np.ndarray], cfg: WindowConfig, counts: collections.Counter) -> Windows:
  users = {s: [] for s in SPLITS}
  items = {s: [] for s in SPLITS}
  too_short = 0
  held = set(sorted(seqs, key=lambda u: hashlib.sha256(str(u).encode()).hexdigest())[:cfg.holdout_users])
  for user, seq in sorted(seqs.items()):
    starts = list(range(0, len(seq) - cfg.length + 1, cfg.stride))
    if not starts:
      too_short += 1
      continue
    if user in held:
      users["test"] += [user] * len(starts)
      items["test"] += [seq[s:s + cfg.length] for s in starts]
      continue
    n_test = min(cfg.test_windows, len(starts))
    n_val = min(cfg.val_windows, len(starts) - n_test)
    cut_val, cut_test = len(starts) - n_test - n_val, len(starts) - n_test
    first_eval_target = starts[cut_val] + cfg.history_len if cut_val < len(starts) else len(seq)
    for j, s in enumerate(starts):
      split = "train" if j < cut_val else "validation" if j < cut_test else "test"
      if split == "train" and cfg.strict_future and s + cfg.length > first_eval_target:
        counts["train_window_overlapping_eval"] += 1
        continue
      users[split].append(user)
      items[split].append(seq[s:s + cfg.length])
  counts["users_too_short"] += too_short
  stats = {}
  arrays_u, arrays_i = {}, {}
  for s in SPLITS:
    arrays_u[s] = np.array(users[s], np.int64)
    arrays_i[s] = np.array(items[s], np.int64).reshape(-1, cfg.length)
    stats[s] = {"windows": len(users[s]), "users": len(set(users[s])),
                "items": int(len(np.unique(arrays_i[s]))) if len(users[s]) else 0,
                "targets": int(len(np.unique(arrays_i[s][:, cfg.history_len]))) if len(users[s]) else 0}
  return Windows(arrays_u, arrays_i, stats)
