"""accelerator.sh --dry-run: both accelerator runs at the tiny preset on CPU, with TensorFlow hidden from
every part as on the card's image. Every part ran and left finite figures, every stage of run 1
completed, the figures agree with their sources, and the training stages' TensorBoard files (written
without TensorFlow) read back with tensorboard's own reader."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# run 2 times our sampler against transformers' torch model; the Python 3.12 pass (no torch) skips the dry run
pytestmark = [pytest.mark.requires_torch, pytest.mark.xdist_group("accelerator")]


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
  out = tmp_path_factory.mktemp("accel")
  # What is asserted is behaviour, not speed: the limits are scaled so that a busy CI core cuts no part.
  env = {**os.environ, "XLA_FLAGS": "", "PYTHON": sys.executable, "ACCEL_LIMIT_SCALE": "20"}
  run = subprocess.run(["bash", "pgen_jax/bench/accelerator.sh", "--dry-run", str(out)], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=2400)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  return out, run.stdout


def finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_run1_every_stage_completes_and_reports_its_time(dry):
  out, stdout = dry
  run1 = json.loads((out / "run1.json").read_text())
  assert run1["preset"] == "tiny" and "cpu" in run1["device"]
  for stage in ("sft", "grpo", "eval", "export"):
    part = run1["parts"][stage]
    assert part["status"] == "ok" and part["completed"], (stage, part)
    assert finite(part["figures"]["stage_s"]) and 0 < part["figures"]["stage_s"] <= part["wall_s"] + 1
    assert part["figures"]["peak_gb"] is None  # CPU reports no device memory: n/a, not a made-up zero
  assert run1["goals"][0]["met"] is True and run1["goals"][1]["met"] is None  # a verdict on the shape alone
  # the job's own GRPO step: its parts fit inside the step it logged
  g = run1["parts"]["grpo"]["figures"]
  assert all(finite(g[k]) for k in ("rollout_s", "reward_s", "update_s", "step_s"))
  assert g["rollout_s"] + g["reward_s"] + g["update_s"] <= g["step_s"]
  assert (out / "work" / "run1" / "job" / "hf" / "config.json").exists()  # export wrote the HF directory
  assert "| every stage of run 1 completes |" in stdout  # the table is printed


def test_training_stages_write_tensorboard_files_without_tensorflow(dry):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  out, _ = dry
  job = out / "work" / "run1" / "job"
  log = (out / "work" / "run1" / "sft.log").read_text()
  assert "No module named 'tensorflow'" not in log
  # clu's LoggingWriter wrote the same scalars to the log: they must match the event file's
  logged = {int(s): float(v) for s, v in re.findall(r"\] \[(\d+)\] grad_norm=\S+, loss=([-\d.e+]+)", log)}
  acc = EventAccumulator(str(job / "sft" / "tb"))
  acc.Reload()
  assert "samples" in acc.Tags()["images"]  # the sample grid
  events = {e.step: e.value for e in acc.Scalars("loss")}
  assert sorted(events) == sorted(logged) == [1, 2]
  for step, value in logged.items():
    assert events[step] == pytest.approx(value, rel=1e-5)
  grpo = EventAccumulator(str(job / "grpo" / "tb"))
  grpo.Reload()
  assert {"reward_mean", "time/step"} <= set(grpo.Tags()["scalars"])


def test_run2_every_part_has_finite_figures(dry):
  out, _ = dry
  run2 = json.loads((out / "run2.json").read_text())
  parts = run2["parts"]
  for name in ("generate", "grpo_split", "sft", "history"):
    assert parts[name]["status"] == "ok", (name, parts[name])
  gen = parts["generate"]["figures"]
  assert all(finite(gen[k]) and gen[k] > 0 for k in ("ours_images_per_s", "hf_images_per_s", "ratio"))
  assert gen["ratio"] == pytest.approx(gen["ours_images_per_s"] / gen["hf_images_per_s"], rel=1e-6)
  assert gen["roofline"] is None  # no HBM bandwidth on CPU
  hist = parts["history"]["figures"]
  assert hist["ratio"] == pytest.approx(hist["ours_images_per_s"] / hist["unshared_images_per_s"], rel=1e-6)
  rows = parts["sft"]["rows"]
  assert sorted((r["batch"], r["remat"]) for r in rows) == [(4, "dots_saveable"), (4, "full"), (8, "dots_saveable"),
                                                           (8, "full")]
  for r in rows:
    assert finite(r["ms_per_step"]) and r["micro_batch"] == 4 and r["mfu"] is None
    assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["seq"] / (r["ms_per_step"] / 1e3), rel=1e-6)
  split = parts["grpo_split"]["figures"]
  fns = ("sampler", "update_step", "old_logprobs", "reward_terms")
  assert all(finite(split[f"{f}_s"]) and split[f"{f}_s"] > 0 for f in fns)
  assert split["step_s"] == pytest.approx(sum(split[f"{f}_s"] for f in fns))
  # Compiled here and beforehand by --prepare, both on this CPU with the same config: XLA's figures agree.
  memory = {m["function"]: m for m in parts["grpo_split"]["memory"]}
  assert set(memory) == set(fns)
  for m in memory.values():
    assert m["peak_gb"] > 0 and m["cpu_peak_gb"] == pytest.approx(m["peak_gb"], rel=1e-6)
    assert m["cpu_flops"] == pytest.approx(m["flops"], rel=1e-6)
  # the goals are set for Janus-Pro-1B on a card: at the tiny preset the figures stand without a verdict
  goals = {g["goal"]: g for g in run2["goals"]}
  assert len(goals) == 4 and all(g["met"] is None for g in goals.values())
  assert goals["generation >= 6x transformers at 16 x 4"]["figure"] == pytest.approx(gen["ratio"])
  assert goals["GRPO step at the paper's shape: rewards <= 10% of it"]["figure"] == pytest.approx(
      split["reward_terms_s"] / split["step_s"])
