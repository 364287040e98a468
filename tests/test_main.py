"""The job entry point: config validation errors name the key; the export stage writes a HF Janus."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args, env=None):
  return subprocess.run([sys.executable, "-m", "pgen_jax.main", *args], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


@pytest.mark.parametrize("args,key", [
    (["--config=configs/demo.py", "--config.model.dtype=float64"], "model.dtype"),
    (["--config=configs/demo.py", "--config.model.preset=janus-9b"], "model.preset"),
    (["--config=configs/demo.py", "--config.stages=('sft','train')"], "unknown stage 'train'"),
    (["--config=configs/demo.py", "--config.mesh.fsdp=0"], "mesh.fsdp"),
    (["--config=configs/demo.py", "--config.sft.batch_size=10", "--config.sft.grad_accum=3"], "sft.grad_accum"),
    (["--config=configs/demo.py", "--config.sft.trainable=('language_model','decoder')"], "sft.trainable"),
    (["--config=configs/demo.py", "--config.sft.lr_scales.aligner=-1.0"], "sft.lr_scales.aligner"),
    (["--config=configs/demo.py", "--config.sft.trainable=('language_model','vqmodel')"], "sft.pretokenize"),
    (["--config=configs/demo.py", "--config.prompt.uncond=none"], "prompt.uncond"),
    (["--config=configs/demo.py", "--config.vq.perceptual=0.5"], "vq.perceptual: the LPIPS term needs its weights"),
    (["--config=configs/movielens.py", "--config.stages=('sft',)"],
     "model.checkpoint: checkpoints/Janus-Pro-1B is not a directory"),
    (["--config=configs/demo.py", "--config.stages=('grpo',)", "--config.grpo.group_size=1"], "grpo.group_size"),
    (["--config=configs/demo.py", "--config.stages=('grpo',)", "--config.grpo.reward=models"], "reward_models.clip: empty"),
    (["--config=configs/movielens.py", "--config.grpo.reward=pixel"], "grpo.reward: 'pixel' judges the synthetic"),
    (["--config=configs/bench_grpo_1b.py", "--config.reward_models.dino=random:dinov3"], "reward_models.dino: 'random:dinov3'"),
    (["--config=configs/pixelrec.py", "--config.model.checkpoint=", "--config.data.root=/nonexistent"],
     "data.root"),
    (["--config=configs/demo.py", "--config.compile_cache=README.md"], "compile_cache: 'README.md'"),
])
def test_bad_config_is_named(args, key):
  run = run_main(*args)
  assert run.returncode == 2
  assert key in run.stderr


def test_export_stage_writes_a_directory_transformers_loads(tmp_path):
  out, cache = tmp_path / "hf", tmp_path / "xla"
  args = ["--config=configs/demo.py", "--config.stages=('export',)", f"--config.workdir={tmp_path}",
          f"--config.compile_cache={cache}"]
  run = run_main(*args, f"--config.export.dir={out}")
  assert run.returncode == 0, run.stderr
  # the random init's programs were kept, and a second run loads them instead of compiling
  assert any(p.name.startswith("jit_") for p in cache.iterdir())
  again = run_main(*args, f"--config.export.dir={tmp_path / 'hf2'}", env={"JAX_LOG_COMPILES": "1"})
  assert again.returncode == 0, again.stderr[-2000:]
  assert "Persistent compilation cache hit" in again.stderr
  model = T.JanusForConditionalGeneration.from_pretrained(out).eval()
  ids = torch.tensor([[1, 5, 7, 9]])
  with torch.no_grad():
    logits = model(input_ids=ids).logits
  assert logits.shape == (1, 4, model.config.text_config.vocab_size)
  assert np.isfinite(logits.numpy()).all()


def test_prepare_stage_builds_the_store_once(tmp_path):
  args = ["--config=configs/demo.py", "--config.stages=('prepare',)", f"--config.workdir={tmp_path}",
          f"--config.data.root={tmp_path}/world"]
  first = run_main(*args)
  assert first.returncode == 0, first.stderr[-2000:]
  stats = __import__("json").loads(first.stdout.strip().splitlines()[-1])
  assert stats["splits"]["train"]["windows"] > 0 and stats["splits"]["test"]["users"] == 96  # every user of the world
  assert (tmp_path / "world" / "ratings.dat").exists()
  second = run_main(*args)
  assert second.returncode == 0 and "already in" in second.stderr
