"""Recommenders on hand-made cases: Pop and ItemKNN rankings computed by hand, the ranking metrics by
hand, and SASRec learning a deterministic next-item rule."""

import numpy as np

from pgen_jax.recommenders.baselines import ItemKNN, LastItem, Pop, Random, popularity
from pgen_jax.recommenders.ranking import hit_rate, ndcg, ranking_metrics, top_k
from pgen_jax.recommenders.sasrec import SASRec, SASRecConfig

# Users' training windows (item indices). User 0 has {0,1,2,3}, user 1 {0,2,4}, user 2 {2,3,4}.
WINDOWS = np.array([[0, 1, 2], [1, 2, 3], [0, 2, 4], [2, 3, 4]])
USERS = np.array([0, 0, 1, 2])


def test_pop_counts_users_and_excludes_history():
  pop = Pop().fit(WINDOWS, USERS, 5)
  np.testing.assert_array_equal(pop.pop, [2, 1, 3, 2, 2])  # item 2 twice for user 0 counts once
  ranked = top_k(pop.scores(np.array([[2]])), np.array([[2]]), 4)
  np.testing.assert_array_equal(ranked, [[0, 3, 4, 1]])  # ties (2, 2, 2) by lower index


def test_itemknn_cosine_by_hand():
  knn = ItemKNN().fit(WINDOWS, USERS, 5)
  # co-occurrence counts c_01 = 1, c_0 = 2, c_1 = 1 -> 1/sqrt(2); c_02 = 2, c_2 = 3 -> 2/sqrt(6); c_14 = 0
  assert abs(knn.sim[0, 1] - 0.70710678) < 1e-6 and abs(knn.sim[0, 2] - 0.81649658) < 1e-6
  assert knn.sim[1, 4] == 0 and knn.sim[3, 3] == 0
  # history [0, 1]: item 2 = 2/sqrt6 + 1/sqrt3 = 1.3938, item 3 = 1/2 + 1/sqrt2 = 1.2071, item 4 = 1/2 + 0
  s = knn.scores(np.array([[0, 1]]))
  np.testing.assert_allclose(s[0, 2:], [1.39384685, 1.20710678, 0.5], atol=1e-6)
  np.testing.assert_array_equal(top_k(s, np.array([[0, 1]]), 3), [[2, 3, 4]])
  # history [4]: 2/sqrt6 for item 2, 1/2 for items 0 and 3 (tie: lower index first), 0 for item 1
  np.testing.assert_array_equal(top_k(knn.scores(np.array([[4]])), np.array([[4]]), 4), [[2, 0, 3, 1]])
  # LastItem reads only the last item: [0, 4] ranks like [4], with 0 excluded
  last = LastItem().fit(WINDOWS, USERS, 5)
  np.testing.assert_array_equal(top_k(last.scores(np.array([[0, 4]])), np.array([[0, 4]]), 3), [[2, 3, 1]])


def test_random_is_a_permutation_without_history():
  r = Random(0).fit(WINDOWS, USERS, 50)
  ranked = top_k(r.scores(np.array([[3, 7]] * 4)), np.array([[3, 7]] * 4), 48)
  assert all(sorted(row) == sorted(set(range(50)) - {3, 7}) for row in ranked.tolist())


def test_ranking_metrics_by_hand():
  ranked = np.array([[2, 3, 4], [0, 3, 4], [1, 0, 2]])
  target = np.array([3, 0, 9])
  np.testing.assert_array_equal(hit_rate(ranked, target, 1), [0, 1, 0])
  np.testing.assert_array_equal(hit_rate(ranked, target, 3), [1, 1, 0])
  np.testing.assert_allclose(ndcg(ranked, target, 3), [1 / np.log2(3), 1.0, 0.0])
  m = ranking_metrics(ranked, target, ks=(1, 3))
  assert m["hr@1"] == 1 / 3 and abs(m["ndcg@3"] - (0.63092975 + 1) / 3) < 1e-7


def test_sasrec_learns_a_next_item_rule():
  n, length = 30, 6
  rng = np.random.default_rng(0)
  start = rng.integers(0, n, 400)
  seqs = (start[:, None] + 7 * np.arange(length)[None]) % n  # next = (i + 7) mod 30, a 30-cycle
  model = SASRec(SASRecConfig(dim=32, layers=1, heads=1, dropout=0.0, lr=5e-3, epochs=15, batch_size=64))
  model.fit(seqs, np.arange(len(seqs)), n)
  assert model.losses[-1] < model.losses[0]
  test_start = rng.integers(0, n, 100)
  hist = (test_start[:, None] + 7 * np.arange(length - 1)[None]) % n
  target = (hist[:, -1] + 7) % n
  ranked = top_k(model.scores(hist), hist, 10)
  assert hit_rate(ranked, target, 1).mean() >= 0.9


def test_spread_windows_covers_each_transition_once():
  from pgen_jax.recommenders.sasrec import spread_windows
  seq = np.arange(10)
  windows = np.stack([seq[s:s + 4] for s in range(7)] + [seq[s:s + 4] + 100 for s in range(2)])  # stride 1
  users = np.array([1] * 7 + [2] * 2)
  kept = spread_windows(windows, users, 1)
  # user 1: starts 0, 3, 6 cover 0..9; user 2: start 0, then its last window (start 1)
  np.testing.assert_array_equal(kept, [seq[0:4], seq[3:7], seq[6:10], seq[0:4] + 100, seq[1:5] + 100])


def test_ties_go_to_the_more_popular_item():
  # Added to WINDOWS: user 4 has {5, 6, 7}, user 5 {7}, user 6 {7, 8}; item 9 is user 3's only item, so it
  # co-occurs with nothing and LastItem on it has all-zero scores. Popularity (users per item) by hand:
  # item 0: 2, 1: 1, 2: 3, 3: 2, 4: 2, 5: 1, 6: 1, 7: 3, 8: 1, 9: 1.
  windows = np.concatenate([WINDOWS, [[5, 6, 7], [7, 7, 7], [7, 8, 8], [9, 9, 9]]])
  users = np.concatenate([USERS, [4, 5, 6, 3]])
  pop = popularity(windows, users, 10)
  np.testing.assert_array_equal(pop, [2, 1, 3, 2, 2, 1, 1, 3, 1, 1])
  last = LastItem().fit(windows, users, 10)
  history = np.array([[1, 9]])
  assert not last.scores(history).any()
  # nothing to say: the most popular first (2 and 7: 3 users, lower index first), then 0, 3, 4 (2 users)
  np.testing.assert_array_equal(top_k(last.scores(history), history, 5, pop), [[2, 7, 0, 3, 4]])
  np.testing.assert_array_equal(top_k(last.scores(history), history, 5), [[0, 2, 3, 4, 5]])  # by index alone
  # a real score still comes first: ItemKNN on [4] ranks 2 (2/sqrt6), then 0 and 3 (1/2 each, 2 users each:
  # lower index), then among the zero scores the most popular, item 7
  knn = ItemKNN().fit(windows, users, 10)
  np.testing.assert_array_equal(top_k(knn.scores(np.array([[4]])), np.array([[4]]), 4, pop), [[2, 0, 3, 7]])
  np.testing.assert_array_equal(top_k(knn.scores(np.array([[4]])), np.array([[4]]), 4), [[2, 0, 3, 1]])
