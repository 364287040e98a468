"""pgen_jax.bench.memory compiles every stage ahead of time at a tiny preset and reports XLA's figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pgen_jax.models import abstract_janus, tiny

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"stage", "function", "preset", "devices", "argument_gb", "output_gb", "temp_gb", "alias_gb", "peak_gb",
        "flops", "bytes_accessed", "compile_s"}
# A tiny preset at a small shape: 2 prompts x 2 samples, one 16px history image, fp32 everywhere.
SHAPE = ["--preset=tiny", "--config.data.image_size=16", "--config.data.history_len=1",
         "--config.grpo.prompts_per_step=2", "--config.grpo.group_size=2", "--config.grpo.micro_batch=1",
         "--config.sft.batch_size=2", "--config.eval.batch_size=2", "--config.eval.samples=2",
         "--config.reward_models.clip=random:tiny", "--config.reward_models.dino=random:tiny", "--config.model.dtype=float32",
         "--config.prompt.max_text_tokens=4", "--config.reward_models.dino_size=16", "--config.prompt.uncond_pads=drop",
         "--config.grpo.reward=models"]


def start_stage(stage: str, devices: int, *args: str, config: str = "configs/demo.py", **streams) -> subprocess.Popen:
  # TF_CPP_MIN_LOG_LEVEL=0: XLA's C++ warnings reach stderr whatever the caller's environment says
  return subprocess.Popen([sys.executable, "-m", "pgen_jax.bench.memory", f"--config={config}", f"--stage={stage}",
                           f"--devices={devices}", *args], cwd=ROOT, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "0"}, **streams)


def bench(stage: str, devices: int, *extra: str) -> list[dict]:
  run = start_stage(stage, devices, *SHAPE, *extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = run.communicate()
  assert run.returncode == 0, err[-3000:]
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_rollout_arguments_are_the_weights_and_the_prompts():
  rows = bench("rollout", 1)
  sampler, step, last = rows
  assert set(sampler) >= KEYS and sampler["function"] == "sampler" and sampler["devices"] == 1
  # By hand: the fp32 parameters generation reads (not the text head, nor the VQ encoder), then ids,
  # mask (2 x T int32), uncond rows (2 x 2: BOS, BOI), one 16px float32 image per prompt, and 4 PRNG
  # keys (2 x uint32).
  unused = ("lm_head", "vqmodel/encoder", "vqmodel/quant_conv")
  params = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_flatten_with_path(abstract_janus(tiny())[1])[0]
               if not "/".join(str(getattr(k, "key", k)) for k in path).startswith(unused))
  t = 2 + 1 * (1 + 16 + 2 + 4)  # BOS + BOI; one item: its "\n" literal, 16 image tokens + 2 tags, 4 text tokens
  inputs = 2 * t * 4 * 2 + 2 * 2 * 4 * 2 + 2 * 16 * 16 * 3 * 4 + 4 * 2 * 4
  assert sampler["argument_gb"] * 1e9 == pytest.approx(4 * params + inputs, abs=64)
  for row in rows[:2]:
    assert row["peak_gb"] == pytest.approx(row["argument_gb"] + row["output_gb"] + row["temp_gb"] - row["alias_gb"])
    assert row["flops"] > 0 and row["bytes_accessed"] > 0
    # on CPU: the peak less the f32 copies of bf16 arguments (bench.cpu_upcast; none of this fp32 model's)
    assert row["cpu_upcast_gb"] == 0 and row["peak_bf16_dots_gb"] == row["peak_gb"]
  assert step["function"] == "decode_step" and 0 < step["floor_gb"] * 1e9 <= step["bytes_accessed"]
  assert last == {"stage": "rollout", "peak_gb": max(r["peak_gb"] for r in rows[:2]),
                  "peak_bf16_dots_gb": max(r["peak_gb"] for r in rows[:2])}


@pytest.mark.parametrize("stage,functions", [("sft", {"train_step"}),
                                             ("grpo", {"sampler", "update_step", "old_logprobs", "reward_terms"}),
                                             ("eval", {"sampler", "clip_embed", "dino_embed"})])
def test_every_stage_on_two_fake_devices(stage, functions):
  # grpo also runs each function on random inputs (--time): the step's time split without a dataset
  rows = bench(stage, 2, *(["--time=1"] if stage == "grpo" else []))
  *fns, last = rows
  if stage == "grpo":
    assert all(0 < r["run_s"] < 60 for r in fns), fns
  assert {r["function"] for r in fns} == functions
  for r in fns:
    assert set(r) >= KEYS and r["devices"] == 2 and r["stage"] == stage
    assert r["peak_gb"] == pytest.approx(r["argument_gb"] + r["output_gb"] + r["temp_gb"] - r["alias_gb"])
  assert last["peak_gb"] == max(r["peak_gb"] for r in fns)
  for r in fns:  # the donated training state is updated in place: its shardings in and out agree
    if r["function"] in ("train_step", "update_step"):
      assert r["alias_gb"] == pytest.approx(r["output_gb"], rel=0.05), r  # all but the metrics


# configs/movielens.py (bf16, remat full, SFT batch in grad_accum slices, GRPO slices of one prompt) at a tiny
# preset where every batch divides over 8 devices: SFT 16 as 2 slices of 8, GRPO and eval 8 prompts.
EIGHT = ["--preset=tiny", "--config.data.image_size=16", "--config.data.history_len=1", "--config.data.future_len=1",
         "--config.prompt.max_text_tokens=4", "--config.sft.batch_size=16", "--config.sft.grad_accum=2",
         "--config.grpo.prompts_per_step=8", "--config.grpo.group_size=2", "--config.eval.batch_size=8",
         "--config.eval.samples=1", "--config.reward_models.clip=random:tiny", "--config.reward_models.dino=random:tiny",
         "--config.reward_models.dino_size=16"]


def test_eight_devices_need_no_involuntary_reshards(tmp_path):
  """Where the SPMD partitioner cannot reach the sharding an op needs from its operand's, it gathers the whole
  tensor on every device and slices it again, and says so on stderr ("Involuntary full rematerialization").
  No stage's program may need one. (At this shape the SFT step printed 6 while its micro-batches were
  contiguous slices of the batch, as at Janus-Pro-7B on 8 devices.)"""
  stages = ("rollout", "sft", "grpo", "eval")
  runs = {}
  for stage in stages:  # side by side: XLA compiles each on one core
    with open(tmp_path / f"{stage}.out", "w") as out, open(tmp_path / f"{stage}.err", "w") as err:
      runs[stage] = start_stage(stage, 8, *EIGHT, config="configs/movielens.py", stdout=out, stderr=err)
  codes = {stage: run.wait(timeout=1200) for stage, run in runs.items()}
  forced = {}
  for stage in stages:
    assert codes[stage] == 0, (tmp_path / f"{stage}.err").read_text()[-3000:]
    rows = [json.loads(line) for line in (tmp_path / f"{stage}.out").read_text().splitlines() if line.startswith("{")]
    assert rows[0]["devices"] == 8 and rows[-1]["stage"] == stage
    err = (tmp_path / f"{stage}.err").read_text().splitlines()
    forced[stage] = [line[:400] for line in err if "Involuntary full rematerialization" in line]
  counts = {stage: len(lines) for stage, lines in forced.items()}
  assert counts == dict.fromkeys(stages, 0), "\n".join(line for lines in forced.values() for line in lines)


def test_random_inputs_match_the_abstract_args():
  from jax.sharding import NamedSharding, PartitionSpec as P
  from pgen_jax.bench.random_inputs import random_like
  from pgen_jax.models import make_mesh
  s = NamedSharding(make_mesh(), P())
  args = ({"w": jax.ShapeDtypeStruct((3, 5), jax.numpy.bfloat16, sharding=s),
           "ids": jax.ShapeDtypeStruct((4, 7), jax.numpy.int32, sharding=s)},
          jax.ShapeDtypeStruct((6, 2), jax.numpy.uint32, sharding=s), jax.ShapeDtypeStruct((), jax.numpy.bool_))
  (d, keys, flag), again = random_like(args, 0), random_like(args, 1)
  w, ids = np.asarray(d["w"], np.float32), np.asarray(d["ids"])
  assert d["w"].dtype == jax.numpy.bfloat16 and w.shape == (3, 5) and np.abs(w).max() <= 0.02 and w.std() > 0.003
  assert ids.dtype == np.int32 and ids.min() >= 1 and ids.max() < 64 and len(np.unique(ids)) > 10
  assert keys.dtype == np.uint32 and len(np.unique(np.asarray(keys))) == 12 and bool(flag)
  assert not np.array_equal(np.asarray(again[0]["w"], np.float32), w)  # each seed, other values
