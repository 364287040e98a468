"""Failures a user can cause end in one line naming the file or key, a non-zero exit code and no
traceback; prepare runs without a model; cross-stage checks run before the first stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgen_jax import fileio

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "pgen_jax.main", *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def one_line(run, code, *needles):
  assert run.returncode == code, run.stderr[-3000:]
  assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
  last = run.stderr.strip().splitlines()[-1]
  for n in needles:
    assert n in last, last
  return last


@pytest.fixture
def movielens(tmp_path):
  """Users 1-10 like movies 1-10 in order; user 11 likes only three; user 12 likes none."""
  root = tmp_path / "ml"
  (root / "posters").mkdir(parents=True)
  (root / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{m},Movie {m} (2000),Drama\n"
                                                                       for m in range(1, 11)))
  rows = [f"{u},{m},4.5,{1000 * u + m}" for u in range(1, 11) for m in range(1, 11)]
  rows += [f"11,{m},5.0,{m}" for m in (1, 2, 3)] + [f"12,{m},1.0,{m}" for m in range(1, 11)]
  (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
  for m in range(1, 11):
    Image.fromarray(np.full((24, 16, 3), m * 20, np.uint8)).save(root / "posters" / f"{m}.png")
  return root


def prepare_args(tmp_path, root, *extra):
  return ["--config=configs/movielens.py", "--config.stages=('prepare',)", f"--config.workdir={tmp_path}/run",
          f"--config.data.root={root}", "--config.data.image_size=16", "--config.data.history_len=3",
          "--config.data.future_len=1", "--config.data.workers=0", *extra]


def test_prepare_runs_without_a_model_counts_every_user_and_removes_leftovers(tmp_path, movielens):
  # A killed build's leftovers in the store (TFDS's incomplete.* directories).
  leftover = tmp_path / "run" / "data" / "pgen_histories" / "items-0123456789ab" / "incomplete.ABCDEF_1.1.0"
  leftover.mkdir(parents=True)
  (leftover / "items-train.array_record-00000-of-00001").write_bytes(b"x" * 100)
  run = run_main(*prepare_args(tmp_path, movielens), "--config.model.checkpoint=/nonexistent/Janus-Pro-1B")
  assert run.returncode == 0, run.stderr[-3000:]
  stats = json.loads(run.stdout.strip().splitlines()[-1])
  # 10 users with 10 positives -> windows; user 11: 3 positives, too short for 5; user 12: no positive.
  assert stats["users"] == {"total": 12, "in_windows": 10, "too_short": 1, "without_usable_positive": 1}
  assert not leftover.exists()
  mode = (tmp_path / "run" / "data" / next(p.name for p in (tmp_path / "run" / "data").glob("stats-*.json"))).stat()
  assert mode.st_mode & 0o777 == 0o666 & ~umask()


def umask():
  m = os.umask(0)
  os.umask(m)
  return m


@pytest.mark.parametrize("case,code,needles", [
    ("empty_posters", 4, ["data error: ", "posters: no images named <item id>"]),
    ("ratings_header_only", 4, ["data error: ", "ratings.csv: no usable lines"]),
    ("no_data_root", 2, ["config error: data.root"]),
])
def test_bad_data_is_one_line(tmp_path, movielens, case, code, needles):
  root = movielens
  if case == "empty_posters":
    for p in (root / "posters").iterdir():
      p.unlink()
  elif case == "ratings_header_only":
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
  else:
    root = tmp_path / "nothing"
  one_line(run_main(*prepare_args(tmp_path, root), "--config.model.checkpoint="), code, *needles)


def test_cross_stage_checks_run_before_the_first_stage(tmp_path):
  args = ["--config=configs/demo.py", "--config.stages=('prepare','sft')", f"--config.workdir={tmp_path}",
          f"--config.data.root={tmp_path}/world", "--config.data.history_len=8"]
  one_line(run_main(*args), 2, "configs/demo.py: config error: prompt.max_text_tokens / data.history_len",
           "exceed the model's 512 positions")
  assert not (tmp_path / "world").exists() and not (tmp_path / "data").exists()  # prepare never started


def test_scorer_terms_without_a_scorer_fail_before_the_first_stage(tmp_path):
  from fake_sites import closed_port_url
  args = ["--config=configs/demo.py", "--config.stages=('prepare','grpo')", f"--config.workdir={tmp_path}",
          f"--config.data.root={tmp_path}/world", "--config.grpo.reward=models", "--config.reward_models.dino=",
          "--config.grpo.reward_weights.dino_target=0", "--config.grpo.reward_weights.clip_history=0",
          "--config.grpo.reward_weights.clip_future=0", "--config.grpo.reward_weights.nima=1.0",
          f"--config.reward_models.scorer_url={closed_port_url()}"]
  one_line(run_main(*args), 2, "config error: reward_models.scorer_nima: empty is not there, and nothing answers at")
  assert not (tmp_path / "world").exists()


def test_file_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, movielens):
  (tmp_path / "store").write_text("a file where the store's folder should be")
  args = prepare_args(tmp_path, movielens, f"--config.data.store={tmp_path}/store/data")
  one_line(run_main(*args), 4, f"{tmp_path}/store")
  assert "Traceback" in run_main(*args, "--debug").stderr


def test_outputs_follow_the_umask(tmp_path):
  old = os.umask(0o027)
  try:
    fileio.write_json(tmp_path / "a.json", {"x": 1})
    with fileio.atomic_directory(tmp_path / "d") as d:
      (d / "f").write_text("x")
  finally:
    os.umask(old)
  assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
  assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("flag, needles", [
    ("--config.sft.lrr=3", ["flag error: --config.sft.lrr: no such key in configs/demo.py",
                            "the closest is --config.sft.lr"]),
    ("--config.grpo.bta=0.1", ["--config.grpo.bta: no such key", "the closest is --config.grpo.beta"]),
    ("--config.sft.lr=inf", ["configs/demo.py: config error: sft.lr: inf; must be a finite number"]),
    ("--config.grpo.beta=nan", ["config error: grpo.beta: nan; must be a finite number"]),
    ("--config.sft.lr=fast", ["flag error: flag --config.sft.lr=fast"]),
])
def test_a_bad_config_flag_is_one_line_and_exit_2(tmp_path, flag, needles):
  one_line(run_main("--config=configs/demo.py", f"--config.workdir={tmp_path}", flag), 2, *needles)


@pytest.mark.parametrize("flag", ["--cfg=nan", "--temperature=inf"])
def test_generate_refuses_non_finite_numbers(tmp_path, flag):
  run = subprocess.run([sys.executable, "-m", "pgen_jax.generate", f"--workdir={tmp_path}", "--user=1", flag],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  one_line(run, 2, f"flag error: flag {flag}: must be a finite number")


def test_the_log_shows_our_progress_and_the_libraries_lines_only_on_request(tmp_path):
  args = ["--config=configs/demo.py", "--config.stages=('prepare',)", f"--config.workdir={tmp_path}/a",
          f"--config.data.root={tmp_path}/world"]
  quiet = run_main(*args)
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  json.loads(quiet.stdout)  # stdout holds our summary alone: no TFDS prints before it
  assert "stage prepare" in quiet.stderr and "writing the prepared items" in quiet.stderr
  for library in ("Generating splits", "dataset_builder.py", "Using custom data configuration", "dataset_info.py"):
    assert library not in quiet.stderr, library
  loud = run_main(*args[:-2], f"--config.workdir={tmp_path}/b", f"--config.data.root={tmp_path}/world",
                  "--library_logs")
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert "Generating splits" in loud.stderr and "dataset_builder.py" in loud.stderr
  assert "Downloading and preparing dataset" in loud.stdout
