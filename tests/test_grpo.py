"""The grpo stage end to end on the synthetic world: the reward rises, a hackable reward is caught
(stop and roll-back responses), and a killed run resumes to the same parameters."""

import json

import numpy as np
import pytest

from test_sft import ROOT, final_params, kill_at_checkpoint, run_main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tmp_path_factory.mktemp("grpo_world")


def grpo_args(workdir, world, *stages, **over):
  opts = dict(prompts_per_step=8, group_size=8, log_every=5, ckpt_every=5, beta=0.0, logprobs="cfg", lr=2e-3,
              num_steps=40, reward="genre")
  opts.update(over)
  return ["--config=configs/demo.py", f"--config.stages={tuple(stages)!r}", f"--config.workdir={workdir}",
          f"--config.data.root={world}/world", f"--config.data.store={world}/data", "--config.sft.num_steps=60",
          "--config.sft.genre_probe=False", "--config.sft.eval_every=60", "--config.sft.ckpt_every=60",
          *[f"--config.grpo.{k}={v}" for k, v in opts.items()]]


def summary(workdir):
  return json.loads((workdir / "grpo" / "summary.json").read_text())


def test_reward_rises(tmp_path, world):
  run = run_main(ROOT, *grpo_args(tmp_path, world, "prepare", "sft", "grpo"))
  assert run.returncode == 0, run.stderr[-3000:]
  r = summary(tmp_path)["rewards"]
  assert len(r) == 40
  start, end = np.mean(r[:5]), np.mean(r[-5:])
  assert end > start + 0.3, (start, end)  # seen here: 0.18 -> 0.77


def test_hackable_reward_is_caught_and_stops(tmp_path, world):
  run = run_main(ROOT, *grpo_args(tmp_path, world, "prepare", "grpo", reward="fixed", lr=5e-3, num_steps=40))
  assert run.returncode == 3, run.stderr[-3000:]
  assert "reward hacking suspected" in run.stderr and "last healthy checkpoint is step" in run.stderr
  alarm = summary(tmp_path)["alarms"][0]
  assert alarm["step"] <= 25 and any("similar" in r for r in alarm["reasons"])
  assert not (tmp_path / "grpo" / "final").exists()


def test_hackable_reward_rolls_back(tmp_path, world):
  run = run_main(ROOT, *grpo_args(tmp_path, world, "prepare", "grpo", reward="fixed", lr=5e-3, num_steps=30,
                                  defence_response="rollback", defence_max_rollbacks=1))
  first = summary(tmp_path)["alarms"][0]
  assert first["rolled_back_to"] < first["step"]
  assert "rolled back to step" in run.stderr
  # Either the cautious run finished, or a second alarm stopped it after the one allowed roll-back.
  assert run.returncode == 0 or "reward hacking suspected" in run.stderr


def test_kill_and_resume_continues_identically(tmp_path, world):
  args = lambda w: grpo_args(w, world, "prepare", "grpo", num_steps=16, ckpt_every=4, group_size=4)
  plain = run_main(ROOT, *args(tmp_path / "plain"))
  assert plain.returncode == 0, plain.stderr[-3000:]
  kill_at_checkpoint(args(tmp_path / "killed"), tmp_path / "killed" / "grpo" / "latest" / "8", tmp_path / "killed.log")
  resumed = run_main(ROOT, *args(tmp_path / "killed"))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed GRPO at step" in resumed.stderr
  a = final_params(tmp_path / "plain", "grpo")
  b = final_params(tmp_path / "killed", "grpo")
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert summary(tmp_path / "plain")["rewards"] == summary(tmp_path / "killed")["rewards"]


def test_model_rewards_run_in_the_stage(tmp_path, world):
  """reward=models with real (tiny, random) CLIP and DINOv2 checkpoints: terms computed and logged."""
  from test_clip import hf_clip
  from test_dino import dinov2
  hf_clip("gelu", 2).save_pretrained(tmp_path / "clip")
  dinov2(28).save_pretrained(tmp_path / "dino")
  run = run_main(ROOT, *grpo_args(tmp_path, world, "prepare", "grpo", reward="models", num_steps=3, group_size=2,
                                  log_every=1, ckpt_every=3), f"--config.grpo.clip={tmp_path / 'clip'}",
                 f"--config.grpo.dino={tmp_path / 'dino'}", "--config.grpo.dino_size=28",
                 "--config.grpo.reward_weights.profile=0.0", "--config.grpo.reward_weights.nima=0.0",
                 "--config.grpo.reward_weights.clip_future=0.0")
  assert run.returncode == 0, run.stderr[-3000:]
  for term in ("clip_history", "dino_target"):
    assert f"reward/{term}_mean" in run.stderr
  assert len(summary(tmp_path)["rewards"]) == 3
