"""Windows and splits on a hand-made case (exact), and invariants on the real ml-latest-small."""

import collections
from pathlib import Path

import numpy as np

from pgen_jax.data import histories, movielens
from pgen_jax.data.tables import Interactions

ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def inter(rows):
  a = np.array(rows, dtype=np.float64)
  return Interactions(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2].astype(np.float32),
                      a[:, 3].astype(np.int64))


def test_hand_made_windows_and_splits():
  # User 1: 9 positives (items 101..109 at times 1..9, given out of order), one negative, one without image.
  rows = [(1, 100 + t, 5.0, t) for t in (3, 1, 2, 9, 8, 4, 5, 7, 6)] + [(1, 150, 2.0, 10), (1, 160, 5.0, 11)]
  rows += [(2, 201, 4.0, 1), (2, 202, 4.0, 2)]  # user 2: too short
  cfg = histories.WindowConfig(history_len=2, future_len=1, stride=1, min_rating=4.0, test_windows=1,
                               val_windows=1, strict_future=True)
  counts = collections.Counter()
  usable = set(range(100, 150)) | {201, 202}
  seqs = histories.sequences(inter(rows), cfg, usable, counts)
  assert seqs[1].tolist() == list(range(101, 110))  # chronological
  assert counts["not_positive"] == 1 and counts["item_without_image"] == 1
  w = histories.make_windows(seqs, cfg, counts)
  # 9 items, windows of 4 -> starts 0..5. test: start 5 (target 108), validation: start 4 (target 107).
  assert w.items["test"].tolist() == [[106, 107, 108, 109]]
  assert w.items["validation"].tolist() == [[105, 106, 107, 108]]
  # Training windows must not reach item 107 (the first evaluation target): starts 0..2.
  assert w.items["train"].tolist() == [[101, 102, 103, 104], [102, 103, 104, 105], [103, 104, 105, 106]]
  assert counts["train_window_overlapping_eval"] == 1 and counts["users_too_short"] == 1
  assert w.stats["train"] == {"windows": 3, "users": 1, "items": 6, "targets": 3}


def test_stride_and_all_interactions():
  rows = [(1, 100 + t, 1.0, t) for t in range(10)]
  cfg = histories.WindowConfig(history_len=1, future_len=0, stride=3, min_rating=None, test_windows=1,
                               val_windows=0)
  w = histories.make_windows(histories.sequences(inter(rows), cfg, set(range(100, 110)), collections.Counter()),
                             cfg, collections.Counter())
  # 10 items, windows of 2 every 3: starts 0, 3, 6 (item 109 never ends a full window).
  assert w.items["train"].tolist() == [[100, 101], [103, 104]]
  assert w.items["test"].tolist() == [[106, 107]]


def test_invariants_on_real_ml_latest_small():
  catalog, data, _ = movielens.read(ML_SMALL)
  cfg = histories.WindowConfig()
  w = histories.make_windows(histories.sequences(data, cfg, set(catalog.titles), collections.Counter()), cfg,
                             collections.Counter())
  when = {(u, i): t for u, i, t in zip(data.user.tolist(), data.item.tolist(), data.timestamp.tolist())}
  k = cfg.history_len
  for split in histories.SPLITS:
    for user, items in zip(w.users[split], w.items[split]):
      times = [when[(int(user), int(i))] for i in items]
      assert times == sorted(times)  # chronology within every window
      assert len(set(items.tolist())) == len(items)
  # No evaluation target is ever a training target or future item of the same user, and training
  # windows end no later than the user's first evaluation target (MovieLens has equal timestamps).
  evals = collections.defaultdict(set)
  first_eval = {}
  for split in ("validation", "test"):
    for user, items in zip(w.users[split], w.items[split]):
      evals[int(user)].add(int(items[k]))
      t = when[(int(user), int(items[k]))]
      first_eval[int(user)] = min(first_eval.get(int(user), t), t)
  for user, items in zip(w.users["train"], w.items["train"]):
    assert not evals[int(user)] & set(items[k:].tolist())
    assert when[(int(user), int(items[-1]))] <= first_eval.get(int(user), np.inf)
  assert w.stats["test"]["users"] == w.stats["test"]["windows"] > 500


def test_holdout_users_are_test_only():
  rows = [(u, 100 * u + t, 5.0, t) for u in range(1, 9) for t in range(6)]
  cfg = histories.WindowConfig(history_len=2, future_len=1, holdout_users=3)
  w = histories.make_windows(histories.sequences(inter(rows), cfg, set(range(100, 900)), collections.Counter()),
                             cfg, collections.Counter())
  held = set(w.users["test"].tolist()) - set(w.users["train"].tolist()) - set(w.users["validation"].tolist())
  assert len(held) == 3
  for u in held:  # every window of a held-out user: 6 items -> 3 windows
    assert (w.users["test"] == u).sum() == 3
  assert w.stats["test"]["windows"] == 3 * 3 + 5
