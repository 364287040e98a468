"""The generation benchmark runs end to end, and its roofline byte count is right."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pgen_jax.bench.generate import decode_bytes, decode_bytes_per_step
from pgen_jax.models import abstract_janus, janus_pro_1b, preset


def test_decode_bytes_are_the_weights_a_decode_step_reads():
  cfg = janus_pro_1b()
  _, state = abstract_janus(cfg)
  read = 0
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[0] in ("language_model", "generation_aligner", "generation_head") and "embed_tokens" not in keys:
      read += int(np.prod(x.shape))
  assert decode_bytes_per_step(cfg, rows=0, cache_len=0, itemsize=2) == 2 * read
  kv = 2 * 24 * 8 * 100 * 16 * 128 * 2  # k and v, 24 layers, 8 rows, 100 positions, 16 heads x 128, bf16
  assert decode_bytes_per_step(cfg, rows=8, cache_len=100, itemsize=2) == 2 * read + kv


def test_phased_decode_bytes_count_each_phase_and_pad():
  """Tiny preset (2 layers, 2 kv heads of 16, fp32: 512 bytes per row and position), 1 prompt x 2 samples
  (4 rows), 40 tokens in phases of 16, 32 and 39 positions, counted by hand."""
  by = decode_bytes(preset("tiny"), b=1, n=2, prefix_len=10, n_tok=40, phases=3, itemsize=4)
  pos, rows, steps = 512, 4, 39
  assert by["phase_lengths"] == [16, 32, 39]
  assert by["live_kv"] == rows * pos * sum(range(1, 40)) / steps  # step i attends its i filled positions
  assert by["own_kv"] == pytest.approx(rows * pos * (16 * 16 + 16 * 32 + 7 * 39) / steps)
  assert by["copy_read"] == pytest.approx(rows * pos * (16 + 32) / steps)
  assert by["copy_written"] == pytest.approx(rows * pos * (32 + 39) / steps)
  assert by["prefixes"] == 10 * pos and by["must"] == by["weights"] + 10 * pos + by["live_kv"]
  assert by["kv_per_image"] == 2 * pos * (1041 + 48) and by["kv_per_image_single_loop"] == 2 * pos * 39 * 39


@pytest.mark.requires_torch  # the transformers reference side by side
def test_benchmark_runs(tmp_path):
  out = tmp_path / "bench.jsonl"
  run = subprocess.run([sys.executable, "-m", "pgen_jax.bench.generate", "--preset=tiny", "--prompts=2",
                        "--samples=2", "--repeats=1", "--prompt_len=8", f"--json={out}"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr[-2000:]
  assert "ratio" in run.stdout
  row = __import__("json").loads(out.read_text().splitlines()[0])
  assert row["prompts"] == 2 and row["ours_images_per_s"] > 0 and row["hf_images_per_s"] > 0
  assert row["kv_read_ratio"] == row["kv_read_bytes_per_image"] / row["kv_read_bytes_per_image_single_loop"]
  assert row["loop_read_bytes_per_step"] >= row["must_read_bytes_per_step"] > row["weights_bytes"] > 0
  assert "per-sample KV read per image" in run.stdout


def test_shorter_decode_times_only_ours(tmp_path):
  out = tmp_path / "bench.jsonl"
  run = subprocess.run([sys.executable, "-m", "pgen_jax.bench.generate", "--preset=tiny", "--prompts=2",
                        "--samples=2", "--repeats=1", "--prompt_len=8", "--tokens=5", "--nodecode", f"--json={out}"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr[-2000:]
  row = __import__("json").loads(out.read_text().splitlines()[0])
  # transformers always draws the whole image, so a 5-token decode is not compared with it
  assert row["tokens"] == 5 and not row["decode"] and "hf_images_per_s" not in row
  assert row["ms_per_token_step"] == pytest.approx(4 / (row["ours_images_per_s"] * 5) * 1e3, rel=1e-6)


def test_history_benchmark_compares_shared_and_unshared(tmp_path):
  out = tmp_path / "bench.jsonl"
  run = subprocess.run([sys.executable, "-m", "pgen_jax.bench.generate", "--preset=tiny", "--history=2",
                        "--prompts=1", "--samples=3", "--repeats=1", f"--json={out}"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr[-2000:]
  row = __import__("json").loads(out.read_text().splitlines()[0])
  # BOS + 2 x (BOI + 16 placeholders + EOI + 8 text tokens) + BOI
  assert row["history"] == 2 and row["prompt_len"] == 1 + 2 * (1 + 16 + 1 + 8) + 1
  assert row["ours_images_per_s"] > 0 and row["unshared_images_per_s"] > 0 and row["ratio"] > 0


@pytest.mark.parametrize("pretokenize", [True, False])
def test_sft_benchmark_runs(pretokenize):
  flag = "--pretokenize" if pretokenize else "--nopretokenize"  # target tokens, or target images through the VQ
  run = subprocess.run([sys.executable, "-m", "pgen_jax.bench.sft", "--preset=tiny", "--batch=2", "--history=1",
                        "--text=8", "--steps=1", flag], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert run.returncode == 0, run.stderr[-2000:]
  assert "tokens/s" in run.stdout and "ms/step" in run.stdout and f"pretokenize {pretokenize}" in run.stdout


def test_rewards_benchmark_runs(tmp_path):
  run = subprocess.run([sys.executable, "-m", "pgen_jax.bench.rewards", "--prompts=2", "--samples=3", "--size=32",
                        "--clip=tiny", "--dino=tiny", "--repeats=1", "--per_sample", f"--json={tmp_path / 'r.jsonl'}"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert run.returncode == 0, run.stderr[-2000:]
  assert "ms per call" in run.stdout
  row = __import__("json").loads((tmp_path / "r.jsonl").read_text())
  # counted from the encoders' inputs: CLIP (history, target, future) sees 2 x (5 + 1 + 3) reference images once,
  # DINO (target) 2; repeated for each of the 3 samples, as the rewards did before, 3 times as many
  assert row["encodes"] == {"clip": {"calls": [6 + 18], "generated": 6, "references": 18},
                            "dino": {"calls": [6 + 2], "generated": 6, "references": 2}}
  assert row["per_sample_encodes"]["clip"]["references"] == 54 and row["per_sample_encodes"]["dino"]["references"] == 6
  assert "CLIP 6 generated + 18 references, DINO 6 generated + 2 references" in run.stdout
  assert row["ms_per_call"] > 0 and row["per_sample_ms_per_call"] > 0


def test_attention_benchmark_checks_each_kernel_against_fp32():
  run = subprocess.run([sys.executable, "-m", "pgen_jax.bench.attention", "--impls=xla,blockwise,cudnn",
                        "--check_t=64", "--t=64", "--batch=1", "--repeats=1"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert run.returncode == 0, run.stderr[-2000:]
  rows = {f[0]: f[1:] for f in map(str.split, run.stdout.splitlines()) if f and f[0] in ("xla", "blockwise", "cudnn")}
  for impl in ("xla", "blockwise"):  # bf16 against fp32: relative errors of a few 1e-3, never NaN
    errors = [float(x) for x in rows[impl][:6]]
    assert all(0 < e < 2e-2 for e in errors), (impl, errors)
  assert rows["cudnn"][0] == "failed:"  # no cuDNN on CPU: said, and the other kernels still ran
