"""Best-of-N, the bootstrap intervals, the paired differences and the per-image similarity metrics,
checked by hand on small arrays."""

import numpy as np

from pgen_jax.eval import metrics, stats
from pgen_jax.eval.report import summarise


def test_best_of_n_respects_the_direction():
  v = np.array([[1.0, 3.0, 2.0], [5.0, 4.0, 0.0]])
  np.testing.assert_array_equal(stats.per_window(v, best=False), [2.0, 3.0])
  np.testing.assert_array_equal(stats.per_window(v, best=True), [3.0, 5.0])
  np.testing.assert_array_equal(stats.per_window(v, best=True, higher_is_better=False), [1.0, 0.0])


def test_bootstrap_interval_and_pairing_by_hand():
  idx = np.array([[0, 0, 1], [1, 2, 2], [2, 1, 0], [0, 1, 2]])  # 4 resamples of 3 windows, written out
  a = np.array([1.0, 2.0, 6.0])
  # resampled means: (1+1+2)/3, (2+6+6)/3, (6+2+1)/3, (1+2+6)/3 = 4/3, 14/3, 3, 3
  means = np.array([4 / 3, 14 / 3, 3.0, 3.0])
  mean, lo, hi = stats.interval(a, idx)
  assert mean == 3.0
  # numpy's default percentile interpolates linearly between order statistics: 2.5% of the way
  # through (4/3, 3, 3, 14/3) at position 0.075, 97.5% at position 2.925
  s = np.sort(means)
  assert abs(lo - (s[0] + 0.075 * (s[1] - s[0]))) < 1e-12
  assert abs(hi - (s[2] + 0.925 * (s[3] - s[2]))) < 1e-12
  # paired: a - b per window first, then the same resamples
  b = np.array([0.0, 2.0, 3.0])
  d, dlo, dhi = stats.paired_difference(a, b, idx)
  assert d == (1 + 0 + 3) / 3
  dmeans = np.sort([(1 + 1 + 0) / 3, (0 + 3 + 3) / 3, (3 + 0 + 1) / 3, (1 + 0 + 3) / 3])
  assert abs(dlo - (dmeans[0] + 0.075 * (dmeans[1] - dmeans[0]))) < 1e-12
  assert abs(dhi - (dmeans[2] + 0.925 * (dmeans[3] - dmeans[2]))) < 1e-12
  # the draws are uniform over windows
  big = stats.bootstrap_indices(3, 3000, 0)
  assert big.shape == (3000, 3) and abs(np.bincount(big.ravel()).min() / big.size - 1 / 3) < 0.02


def test_summary_picks_the_best_recommender_per_metric_and_mode():
  # two windows, two images; recommender r1 better on average, r2 better at its best; lpips lower is better
  vals = {"r1": {"cis_target": np.array([[5.0, 5.0], [5.0, 5.0]]), "lpips_target": np.array([[0.5, 0.5], [0.5, 0.5]])},
          "r2": {"cis_target": np.array([[0.0, 9.0], [1.0, 8.0]]), "lpips_target": np.array([[0.9, 0.3], [0.2, 0.8]])},
          "g": {"cis_target": np.array([[7.0, 7.0], [6.0, 8.0]]), "lpips_target": np.array([[0.3, 0.4], [0.3, 0.3]])}}
  s = summarise(vals, {"r1": "recommender", "r2": "recommender", "g": "generator"}, resamples=50)
  assert s["best_recommender"]["cis_target"] == {"mean": "r1", "best": "r2"}
  assert s["best_recommender"]["lpips_target"] == {"mean": "r1", "best": "r2"}
  assert s["methods"]["r2"]["cis_target"]["best"][0] == 8.5      # (9 + 8) / 2
  assert abs(s["methods"]["r2"]["lpips_target"]["best"][0] - 0.25) < 1e-12   # (0.3 + 0.2) / 2, lower wins
  assert s["differences"]["g"]["cis_target"]["mean"][0] == 7.0 - 5.0
  assert s["differences"]["g"]["cis_target"]["best"][0] == (7 + 8) / 2 - 8.5
  assert abs(s["differences"]["g"]["lpips_target"]["best"][0] - (0.3 - 0.25)) < 1e-12


def test_similarities_by_hand():
  g = np.array([[[1.0, 0.0], [0.0, 2.0]]])          # one window, two images
  hist = np.array([[[1.0, 0.0], [1.0, 1.0]]])       # two history items
  target = np.array([[0.0, 3.0]])
  future = np.array([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])
  out = metrics.image_similarities("cis", g, hist, target, future)
  r = 1 / np.sqrt(2)
  np.testing.assert_allclose(out["cis_target"], [[0.0, 100.0]])
  # mean of the unit history embeddings: (1 + r, r) / 2, normalised
  m = np.array([1 + r, r]) / np.linalg.norm([1 + r, r])
  np.testing.assert_allclose(out["cis_history"], [[100 * m[0], 100 * m[1]]])
  np.testing.assert_allclose(out["cis_history_items"], [[100 * (1 + r) / 2, 100 * (0 + r) / 2]])
  np.testing.assert_allclose(out["cis_future"], [[0.0, 100 / 3]], atol=1e-12)
  np.testing.assert_allclose(out["cis_future_max"], [[100.0, 100.0]])
  np.testing.assert_allclose(metrics.text_similarity(g, np.array([[1.0, 1.0]])), [[100 * r, 100 * r]])


def test_cross_user_by_hand():
  g = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # three windows of one image
  users = np.array([7, 8, 7])                               # windows 0 and 2 share a user
  r = 1 / np.sqrt(2)
  # window 0: only user 8's image counts (cos 0); window 1: the two of user 7 (0 and r); window 2: user 8 (r)
  np.testing.assert_allclose(metrics.cross_user(g, users), [[0.0], [100 * r / 2], [100 * r]], atol=1e-12)


def test_generate_then_ground_by_hand():
  """Comparison.ground (what eval's HR/NDCG of a generator rank) on a hand-built catalog of 8 posters, pixels as
  the embedding (no CLIP): an image equal to the target's poster ranks the target first; one equal to a history
  item's poster never lists that item, so it cannot count as a hit."""
  from types import SimpleNamespace
  from pgen_jax.eval.evaluate import Comparison
  from pgen_jax.recommenders.ranking import ranking_metrics
  rng = np.random.default_rng(0)
  posters = rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
  catalog = type("Catalog", (), {"__len__": lambda self: 8, "embeddings": lambda self, kind, fn, idx: fn(posters[idx])})
  fake = SimpleNamespace(catalog=catalog(), models=SimpleNamespace(has_clip=False, clip=None),
                         windows=SimpleNamespace(history=np.array([[0, 1], [2, 3]]), target=np.array([4, 5])))
  noise = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  images = np.stack([[posters[4], posters[1]],     # the target's poster, and a history item's
                     [posters[2], noise]])          # a history item's poster, and noise
  ranked = Comparison.ground(fake, images, k=10)
  assert ranked.shape == (2, 6)  # 8 items less each window's 2 history items
  assert ranked[0, 0] == 4 and not set(ranked[0]) & {0, 1} and not set(ranked[1]) & {2, 3}
  # window 1 by hand: items by their best cosine (pixels as vectors) to either image
  v = lambda x: x.reshape(len(x), -1).astype(np.float64) / np.linalg.norm(x.reshape(len(x), -1), axis=1, keepdims=True)
  best = (v(images[1]) @ v(posters).T).max(0)
  want = [i for i in np.argsort(-best, kind="stable") if i not in (2, 3)]
  assert list(ranked[1]) == want
  r5 = want.index(5)
  got = ranking_metrics(ranked, fake.windows.target, ks=(1, 10))
  assert got["hr@1"] == (1 + (r5 == 0)) / 2 and got["hr@10"] == 1.0
  assert abs(got["ndcg@10"] - (1 + 1 / np.log2(r5 + 2)) / 2) < 1e-12
