"""Reward-hacking signals on hand-made sequences and embeddings."""

import jax.numpy as jnp
import numpy as np
import pytest

from pgen_jax.train.hacking import DefenceConfig, HackingMonitor, cross_user_similarity, diversity_penalty


def test_similarity_across_users_by_hand():
  e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
  users = jnp.array([1, 1, 2, 3])
  s = 1 / np.sqrt(2)
  # pairs across users: (0,2)=0 (0,3)=s (1,2)=0 (1,3)=s (2,3)=s, each counted twice
  assert float(cross_user_similarity(e, users)) == pytest.approx(3 * s / 5)
  np.testing.assert_allclose(diversity_penalty(e, users), [s / 2, s / 2, s / 3, (2 * s + s) / 3], rtol=1e-6)


def test_collapse_and_convergence_raise_an_alarm_after_patience():
  m = HackingMonitor(DefenceConfig(window=10, warmup=5, patience=3))
  rng = np.random.default_rng(0)
  for step in range(12):  # healthy: spread ~1, different users' images ~0.3 similar
    assert m.update(step, 1.0 + 0.1 * rng.standard_normal(), 0.3 + 0.02 * rng.standard_normal()) is None
  # hacking begins at step 12: one image for everyone
  assert m.update(12, 0.05, 0.97) is None
  assert m.update(13, 0.04, 0.98) is None
  alarm = m.update(14, 0.03, 0.99)
  assert alarm is not None and alarm.step == 14 and len(alarm.reasons) == 2
  # the monitor's state survives a checkpoint round trip
  fresh = HackingMonitor(DefenceConfig(window=10, warmup=5, patience=3))
  fresh.restore(m.state())
  assert fresh.flagged == 3 and list(fresh.stds) == list(m.stds)


def test_a_lone_outlier_is_not_an_alarm():
  m = HackingMonitor(DefenceConfig(warmup=3, patience=2))
  for step, std in enumerate([1.0, 1.1, 0.9, 1.0, 0.1, 1.0, 0.1, 1.0]):
    assert m.update(step, std, 0.2) is None
