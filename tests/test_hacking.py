"""Reward-hacking signals on hand-made sequences and embeddings."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pgen_jax.rewards.similarity import cross_user_similarity, similarity_to_other_users as diversity_penalty
from pgen_jax.train.hacking import DefenceConfig, HackingMonitor, drift_stats


def test_similarity_across_users_by_hand():
  e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
  users = jnp.array([1, 1, 2, 3])
  s = 1 / np.sqrt(2)
  # pairs across users: (0,2)=0 (0,3)=s (1,2)=0 (1,3)=s (2,3)=s, each counted twice
  assert float(cross_user_similarity(e, users)) == pytest.approx(3 * s / 5)
  np.testing.assert_allclose(diversity_penalty(e, users), [s / 2, s / 2, s / 3, (2 * s + s) / 3], rtol=1e-6)


def test_collapse_and_convergence_raise_an_alarm_after_patience():
  m = HackingMonitor(DefenceConfig(window=10, warmup=5, patience=3, distance_ratio=0.5))
  rng = np.random.default_rng(0)
  # healthy: spread ~1; different users' images 0.96 similar (random CLIP, raw pixels: a high baseline)
  for step in range(12):
    assert m.update(step, 1.0 + 0.1 * rng.standard_normal(), 0.96 + 0.002 * rng.standard_normal()) is None
  # hacking begins at step 12: one image for everyone (distance 0.04 -> 0.01)
  assert m.update(12, 0.05, 0.99) is None
  assert m.update(13, 0.04, 0.99) is None
  alarm = m.update(14, 0.03, 0.995)
  assert alarm is not None and alarm.step == 14 and len(alarm.reasons) == 2
  assert alarm.suspect_from == 11  # step 12's samples, the first flagged, were drawn on-policy by step 11's
  # the monitor's state survives a checkpoint round trip (through JSON, as in the checkpoint)
  fresh = HackingMonitor(DefenceConfig(window=10, warmup=5, patience=3))
  fresh.restore(json.loads(json.dumps(m.state())))
  assert fresh.flagged == 3 and list(fresh.stds) == list(m.stds) and fresh.early == m.early
  assert fresh.suspect_from == 11


def test_an_alarm_names_the_parameters_that_drew_its_first_flagged_samples():
  m = HackingMonitor(DefenceConfig(warmup=3, patience=3))
  for step in range(1, 4):
    assert m.update(step, 1.0, 0.3) is None
  assert m.update(4, 1.0, 0.9, drawn_by=2) is None   # sampled ahead: one update stale
  assert m.update(5, 1.0, 0.3, drawn_by=3) is None   # the streak breaks
  for step in (6, 7):
    assert m.update(step, 1.0, 0.9, drawn_by=step - 2) is None
  alarm = m.update(8, 1.0, 0.9, drawn_by=6)
  assert alarm is not None and (alarm.step, alarm.suspect_from) == (8, 4)


def test_similarity_threshold_is_relative_to_the_runs_start():
  # token histograms of a healthy run: 0.3 similar; 0.9 would not pass an absolute 0.9 threshold, but
  # the distance fell from 0.7 to 0.1
  m = HackingMonitor(DefenceConfig(warmup=3, patience=1))
  for step in range(3):
    assert m.update(step, 1.0, 0.3) is None
  assert m.update(3, 1.0, 0.6) is None      # distance 0.4 > 0.5 x 0.7
  alarm = m.update(4, 1.0, 0.9)
  assert alarm is not None and "similar" in alarm.reasons[0]
  # the same 0.9 after a start at 0.85 is not an alarm
  m = HackingMonitor(DefenceConfig(warmup=3, patience=1))
  for step in range(3):
    m.update(step, 1.0, 0.85)
  assert m.update(3, 1.0, 0.9) is None


def test_drift_of_a_named_statistic_raises_an_alarm():
  m = HackingMonitor(DefenceConfig(warmup=4, patience=2, drift_alarm=("brightness",), drift_z=6.0))
  for step, b in enumerate([0.50, 0.52, 0.48, 0.50, 0.51, 0.49]):
    assert m.update(step, 1.0, 0.3, {"brightness": b, "saturation": 0.3}) is None
  assert m.update(6, 1.0, 0.3, {"brightness": 0.70, "saturation": 0.3}) is None  # 0.2 > 6 x 0.0141
  alarm = m.update(7, 1.0, 0.3, {"brightness": 0.72, "saturation": 0.9})  # saturation is not watched
  assert alarm is not None and alarm.reasons == [alarm.reasons[0]] and "brightness" in alarm.reasons[0]


def test_drift_stats_by_hand():
  white, black = np.full((4, 4, 3), 255, np.uint8), np.zeros((4, 4, 3), np.uint8)
  red = np.zeros((4, 4, 3), np.uint8)
  red[..., 0] = 255
  half = np.concatenate([black[:, :2], white[:, 2:]], 1)  # one vertical edge
  s = drift_stats(np.array([[0, 0, 1, 1], [2, 2, 2, 2]]), np.stack([white, red]), vocab=4)
  p = np.array([2, 2, 4]) / 8
  assert s["token_entropy"] == pytest.approx(-(p * np.log(p)).sum())
  assert s["brightness"] == pytest.approx((1.0 + 0.299) / 2, rel=1e-5)
  assert s["saturation"] == pytest.approx(0.5)  # white 0, pure red 1
  assert s["edge_density"] == 0.0
  e = drift_stats(np.zeros((1, 4), int), half[None], vocab=4)
  # the 3x3 gradient grid: the column between pixel 1 and 2 jumps by 1 in luma
  assert e["edge_density"] == pytest.approx(1 / 3) and e["token_entropy"] == 0.0


def test_a_lone_outlier_is_not_an_alarm():
  m = HackingMonitor(DefenceConfig(warmup=3, patience=2))
  for step, std in enumerate([1.0, 1.1, 0.9, 1.0, 0.1, 1.0, 0.1, 1.0]):
    assert m.update(step, std, 0.2) is None
