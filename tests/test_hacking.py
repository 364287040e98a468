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


# Recorded from the injected-hack run (tests/test_grpo.py's hacked_models_args, the demo model from its
# initial parameters, on-policy) at lr 3e-3, steps 1-30: (reward std, cross-user CLIP similarity, token
# entropy). The hacked token share was 0.06 0.09 0.15 0.28 0.48 0.70 0.91 0.98 1.0 from step 1.
HACK_3E3 = [(37.07, 0.9202, 4.1497), (38.57, 0.9265, 4.1218), (42.70, 0.9143, 4.0343), (60.66, 0.9266, 3.7873),
            (70.40, 0.9214, 3.2569), (51.95, 0.9266, 2.5433), (37.47, 0.9337, 1.6609), (25.27, 0.9332, 1.2539),
            (25.22, 0.9340, 1.0534), (16.80, 0.9274, 0.8508), (21.40, 0.9261, 0.7653), (15.24, 0.9319, 0.7811),
            (16.21, 0.9296, 0.7789), (21.07, 0.9380, 0.7821), (19.38, 0.9347, 0.9439), (19.16, 0.9227, 1.0145),
            (15.12, 0.9358, 0.9802), (15.83, 0.9262, 0.9026), (18.50, 0.9241, 0.7858), (16.46, 0.9464, 0.6029),
            (15.20, 0.9394, 0.4958), (25.89, 0.9353, 0.4294), (26.51, 0.9405, 0.3954), (25.47, 0.9404, 0.3505),
            (22.47, 0.9456, 0.3243), (23.35, 0.9468, 0.2656), (21.27, 0.9395, 0.2670), (23.89, 0.9486, 0.2452),
            (21.49, 0.9449, 0.2451), (22.49, 0.9470, 0.2148)]
# ... and at 5e-3, steps 1-12 (token share 0.06 0.09 0.23 0.54 0.88 0.99 from step 1): the ramp is inside
# the first 5 steps, the similarity and drift baseline; the old signals caught it at step 12.
HACK_5E3 = [(37.07, 0.9202, 4.1497), (40.71, 0.9235, 4.1182), (49.18, 0.9153, 3.8411), (68.44, 0.9255, 3.0147),
            (50.63, 0.9248, 1.7665), (19.58, 0.9279, 1.0214), (19.75, 0.9263, 1.0293), (19.91, 0.9316, 0.6067),
            (26.11, 0.9457, 0.3234), (22.17, 0.9619, 0.1657), (26.33, 0.9766, 0.0859), (18.31, 0.9937, 0.0152)]


def first_alarm(signals, settings):
  m = HackingMonitor(settings)
  for step, (std, sim, entropy) in enumerate(signals, 1):
    alarm = m.update(step, std, sim, {"token_entropy": entropy})
    if alarm is not None:
      return alarm
  return None


@pytest.mark.parametrize("signals, before, now", [(HACK_3E3, None, 9), (HACK_5E3, 12, 7)], ids=["lr3e-3", "lr5e-3"])
def test_a_token_collapse_is_caught_within_10_steps(signals, before, now):
  # without the token-entropy signal (the defaults before it): late or never
  old = first_alarm(signals, DefenceConfig(entropy_ratio=0.0))
  assert (old and old.step) == before
  # token_entropy's drift from the first 5 steps would catch 3e-3's at 9, but 5e-3's ramp is in that baseline
  drift = first_alarm(HACK_5E3, DefenceConfig(entropy_ratio=0.0, drift_alarm=("token_entropy",)))
  assert drift.step == 12 and "token_entropy" not in drift.reasons[0]
  alarm = first_alarm(signals, DefenceConfig())
  assert alarm is not None and alarm.step == now <= 10 and "token entropy" in alarm.reasons[0], alarm
  # the first flagged samples (entropy below 0.45 x the first step's 4.15) were drawn by step now - 3's parameters
  assert alarm.suspect_from == now - 3


# tests/test_grpo.py's test_reward_rises run (SFT start, genre reward, lr 2e-3), steps 1-40: its token entropy
# falls too, as the policy sharpens, to 0.51 of the first step's once (step 38).
HEALTHY = [(0.1059, 0.6082, 3.6689), (0.1235, 0.6373, 3.4432), (0.1798, 0.4532, 4.1353), (0.1527, 0.4928, 4.0629),
           (0.1641, 0.4815, 4.1169), (0.1320, 0.5551, 4.0062), (0.1903, 0.4786, 4.0675), (0.1624, 0.5118, 4.0266),
           (0.1216, 0.5080, 4.0376), (0.1642, 0.4287, 4.0651), (0.1222, 0.5252, 3.8557), (0.1778, 0.4860, 3.9182),
           (0.1455, 0.4242, 4.0499), (0.2294, 0.3883, 3.9721), (0.1471, 0.3880, 4.0719), (0.2254, 0.3985, 3.9118),
           (0.3025, 0.3633, 3.8314), (0.2906, 0.3241, 3.9608), (0.2169, 0.4705, 3.8210), (0.2927, 0.3469, 3.9956),
           (0.1199, 0.7373, 3.2972), (0.1066, 0.4985, 3.6639), (0.2133, 0.4747, 3.5816), (0.2679, 0.4124, 3.4553),
           (0.2459, 0.4733, 3.4830), (0.3137, 0.3510, 3.5675), (0.3403, 0.3437, 3.4895), (0.2561, 0.4339, 3.0090),
           (0.3773, 0.3458, 3.4690), (0.2641, 0.6560, 2.7227), (0.1240, 0.4012, 3.0563), (0.3456, 0.4437, 2.7535),
           (0.3645, 0.3991, 2.8781), (0.3306, 0.4417, 2.6745), (0.4429, 0.3891, 3.0573), (0.4294, 0.4060, 2.8270),
           (0.3888, 0.5043, 2.6736), (0.3109, 0.5467, 1.8599), (0.3900, 0.4482, 2.4249), (0.4461, 0.4113, 2.7987)]


def test_a_healthy_runs_sharpening_is_not_an_alarm():
  m = HackingMonitor(DefenceConfig())
  for step, (std, sim, entropy) in enumerate(HEALTHY, 1):
    assert m.update(step, std, sim, {"token_entropy": entropy}) is None, step
    assert m.flagged == 0, step  # not one step flagged


def test_a_roll_back_leaves_no_newer_parameters_in_best(tmp_path):
  """best/ took step 6 while nothing was flagged yet; the alarm rolls back to 4: best/ and the summary's
  best step forget 6, and a later best is saved again (orbax skips a step not above the newest kept)."""
  from pgen_jax.train.checkpoints import Checkpoints
  from pgen_jax.train.grpo_loop import _truncate
  ckpts = Checkpoints(tmp_path, keep=5)
  state = lambda v: {"w": jnp.full((2,), float(v))}
  for step, val in ((2, 0.1), (4, 0.2), (6, 0.9)):
    ckpts.save(step, state(step), "{}")
    ckpts.save_best(step, state(step), -val)
  ckpts.wait()
  assert ckpts.best.all_steps() == [6]
  summary = {"rewards": list(range(9)), "best_step": 6, "best_reward": 0.9,
             "validation": [{"step": s, "reward": r, "flagged": 0} for s, r in ((2, 0.1), (4, 0.2), (6, 0.9))]}
  step, restored, _ = ckpts.roll_back(4, state(0))
  assert step == 4 and float(restored["w"][0]) == 4.0
  assert ckpts.latest.all_steps() == [2, 4] and ckpts.best.all_steps() == []
  _truncate(summary, step, ckpts.best.all_steps())
  assert "best_step" not in summary and "best_reward" not in summary and len(summary["validation"]) == 2
  # after the roll-back step 6 is reached again with other parameters: saved, and named
  ckpts.save_best(6, state(60), -0.5)
  ckpts.wait()
  assert ckpts.best.all_steps() == [6]
  assert float(ckpts.best.restore(6)["params"]["w"][0]) == 60.0
  # a best from before the roll-back's target stays, and the summary names it
  summary = {"rewards": [], "best_step": 8, "best_reward": 0.9,
             "validation": [{"step": 6, "reward": 0.5, "flagged": 0}, {"step": 8, "reward": 0.9, "flagged": 0}]}
  _truncate(summary, 7, [6])
  assert (summary["best_step"], summary["best_reward"]) == (6, 0.5)
  ckpts.close()
