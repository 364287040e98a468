"""Memory and cost of every jitted hot path at the real shape, without allocating anything.

  python -m pgen_jax.bench.memory --config=configs/movielens.py --stage=rollout
  python -m pgen_jax.bench.memory --config=configs/movielens.py --stage=grpo --preset=janus-pro-7b --devices=8

Each stage's jitted functions, made by the loops' own builders (pgen_jax/train/steps.py,
sampling.jit_generate; bench/programs.py gives them abstract inputs), are lowered for the configured
mesh with abstract inputs (shapes, dtypes and shardings; no checkpoint is read) and compiled ahead of
time; XLA's memory and cost
analyses give, per device, the bytes of arguments, outputs and temporaries and the FLOPs and bytes
accessed. `--devices=N` models a mesh of N devices with fake CPU devices. One JSON line per
function:
  {"stage", "function", "preset", "devices", "argument_gb", "output_gb", "temp_gb", "alias_gb",
   "peak_gb", "flops", "bytes_accessed", "compile_s"}   peak_gb = argument + output + temp - alias
then {"stage", "peak_gb"}: the stage's largest peak. The rollout also reports `decode_step`: one
decode step on its own, with `floor_gb`, the bytes it cannot avoid reading (weights, shared prefix
KV and the samples' own KV).

`--time=N` then runs each compiled function N times on random inputs of those shapes, made on the
devices in their shardings (no dataset, no checkpoint), and adds `run_s`, the median wall time of a
call after one untimed call: the GRPO step's time split (sampler, old log-probs, reward terms,
update) at the real shape on an accelerator, without the prepare stage.
"""

from __future__ import annotations

import os
import re
import sys


def _fake_devices(argv: list[str]) -> None:
  # XLA reads the device count when JAX starts: set it before anything imports jax.
  for i, arg in enumerate(argv):
    if arg.startswith("--devices"):
      n = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
      os.environ["JAX_PLATFORMS"] = "cpu"
      flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
      os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(n)}".strip()


_DUMP = None
if __name__ == "__main__":
  _fake_devices(sys.argv)
  from pgen_jax.bench import cpu_upcast
  _DUMP = cpu_upcast.enable_dump()

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pgen_jax.bench import cpu_upcast, programs  # noqa: E402
from pgen_jax.bench.programs import sampler_inputs, spec, stage_graphdef  # noqa: E402
from pgen_jax.bench.random_inputs import run_time  # noqa: E402
from pgen_jax import settings  # noqa: E402
from pgen_jax.setup import mesh_from_config  # noqa: E402
from pgen_jax.models.llama import Prefix  # noqa: E402
from pgen_jax.models.sharding import BATCH  # noqa: E402
from pgen_jax.sampling.prompts import PromptTemplate  # noqa: E402
from pgen_jax.sampling.sampler import SamplingConfig  # noqa: E402

STAGES = ("rollout", "sft", "grpo", "eval")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/movielens.py", "experiment config")
_STAGE = flags.DEFINE_enum("stage", "rollout", STAGES, "which stage's jitted functions")
_PRESET = flags.DEFINE_string("preset", "", "model preset (default: the config's model.preset)")
_DEVICES = flags.DEFINE_integer("devices", 0, "model a mesh of this many fake CPU devices (0: the real ones)")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 0, "prompt tokens (0: estimated from the template)")
_TIME = flags.DEFINE_integer("time", 0, "also run each function this many times on random inputs (run_s)")
_PHASES = flags.DEFINE_integer("decode_phases", SamplingConfig.decode_phases,
                               "the sampler's decode loops over growing caches (1: one loop over the full cache)")

GB = 1e9


def prompt_len(cfg, num_image_tokens: int) -> int:
  """The configured prompt length: the template's text at ~4 characters a token (no tokenizer is
  loaded), history_len items of image block + max_text_tokens, BOS and <begin_of_image>."""
  if _PROMPT_LEN.value:
    return _PROMPT_LEN.value
  t = PromptTemplate(prompt=cfg.prompt.template, item=cfg.prompt.item)
  literal = lambda s: -(-len(s) // 4)
  item = literal(t.item.replace("{image}", "").replace("{text}", "")) + num_image_tokens + 2 + cfg.prompt.max_text_tokens
  return 2 + literal(t.prompt.replace("{history}", "")) + cfg.data.history_len * item


def measure(stage: str, name: str, fn, *args) -> dict:
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - t
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  arg, out, temp, alias = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes,
                           mem.alias_size_in_bytes)
  row = {"stage": stage, "function": name, "preset": _PRESET.value or "", "devices": jax.device_count(),
         "argument_gb": arg / GB, "output_gb": out / GB, "temp_gb": temp / GB, "alias_gb": alias / GB,
         "peak_gb": (arg + out + temp - alias) / GB, "flops": float(cost.get("flops", 0.0)),
         "bytes_accessed": float(cost.get("bytes accessed", 0.0)), "compile_s": round(seconds, 1)}
  upcast = cpu_upcast.newest(_DUMP) if _DUMP is not None and jax.default_backend() == "cpu" else None
  if upcast is not None:  # the CPU backend's f32 copies of bf16 operands: an accelerator's peak is about this less
    row["cpu_upcast_gb"] = upcast / GB
    row["peak_bf16_dots_gb"] = (arg + out + temp - alias - upcast) / GB
  if _TIME.value:
    row["run_s"] = run_time(compiled, args, _TIME.value)
  return row


def rollout(cfg, mesh, graphdef, state, config, stage="rollout", prompts=None, scfg=None):
  """The sampler; by default the GRPO loop's rollout (its sampling config, and in the grpo stage its
  model, remat set)."""
  prompts = prompts or cfg.grpo.prompts_per_step
  scfg = scfg or programs.rollout_sampling(cfg, _PHASES.value)
  length = prompt_len(cfg, config.num_image_tokens)
  model_gd = stage_graphdef(cfg, config, cfg.grpo.remat) if stage == "grpo" else graphdef
  fn, args = programs.sampler(cfg, mesh, model_gd, state, config, scfg, prompts, length)
  rows = [measure(stage, "sampler", fn, *args)]
  rows[0]["decode_phases"] = scfg.decode_phases
  if stage == "rollout":
    rows.append(decode_step(cfg, mesh, graphdef, state, config, prompts, scfg.num_samples, length))
  return rows


def decode_step(cfg, mesh, graphdef, state, config, prompts, samples, length):
  """One decode step of the sampler's loop body alone: what each of the 575 steps reads."""
  lm_cfg, dtype = config.text, jnp.dtype(cfg.model.dtype)
  kvh, hd, layers = lm_cfg.num_key_value_heads, lm_cfg.dim_per_head, lm_cfg.num_hidden_layers
  rows, own = 2 * prompts * samples, config.num_image_tokens - 1
  uncond_len = sampler_inputs(cfg, mesh, config, prompts, samples, length)[2].shape[1]
  kv = lambda b, s: spec((b, kvh, s, hd), dtype, mesh, (BATCH, "tensor"))
  prefix_c = [(kv(prompts, length), kv(prompts, length)) for _ in range(layers)]
  prefix_u = [(kv(prompts, uncond_len), kv(prompts, uncond_len)) for _ in range(layers)]
  cache = [(kv(rows, own), kv(rows, own)) for _ in range(layers)]

  def step(state, tok, prefix_c, mask_c, prefix_u, mask_u, cache, i):
    model = nnx.merge(graphdef, state)
    e = model.prepare_embeddings_for_image_generation(tok[:, None])
    start = jnp.concatenate([jnp.repeat(mask_c.sum(1), samples), jnp.repeat(mask_u.sum(1), samples)])[:, None]
    hidden, cache = model.language_model(jnp.concatenate([e, e]), start + i, None, cache, i,
                                         prefixes=[Prefix(prefix_c, mask_c), Prefix(prefix_u, mask_u)])
    return model.image_logits(hidden[:, 0]), cache

  fn = jax.jit(step, donate_argnums=(6,))
  args = (state, spec((prompts * samples,), jnp.int32, mesh), prefix_c, spec((prompts, length), jnp.int32, mesh),
          prefix_u, spec((prompts, uncond_len), jnp.int32, mesh), cache, jax.ShapeDtypeStruct((), jnp.int32))
  row = measure("rollout", "decode_step", fn, *args)
  lm_state = nnx.split(nnx.merge(graphdef, state).language_model)[1]
  weight_bytes = sum(x.size * dtype.itemsize for x in jax.tree.leaves(lm_state))  # read in the compute dtype
  heads = sum(x.size * dtype.itemsize for part in ("generation_head", "generation_aligner")
              for x in jax.tree.leaves(state[part]))
  kv_bytes = 2 * layers * kvh * hd * dtype.itemsize * (prompts * (length + uncond_len) + rows * own)
  row["floor_gb"] = (weight_bytes + heads + kv_bytes) / GB / jax.device_count()
  return row


def sft_stage(cfg, mesh, graphdef, state, config):
  fn, args = programs.sft_train_step(cfg, mesh, graphdef, state, config, prompt_len(cfg, config.num_image_tokens))
  return [measure("sft", "train_step", fn, *args)]


def grpo_stage(cfg, mesh, graphdef, state, config):
  grpo_cfg = cfg.grpo
  rows = rollout(cfg, mesh, graphdef, state, config, stage="grpo")
  fns = programs.grpo_update(cfg, mesh, graphdef, state, config, prompt_len(cfg, config.num_image_tokens))
  fn, args = fns["update_step"]
  rows.append(measure("grpo", "update_step", fn, *args))
  if grpo_cfg.sample_ahead:  # the loop's old log-probs of the batches sampled ahead
    fn, args = fns["old_logprobs"]
    rows.append(measure("grpo", "old_logprobs", fn, *args))
  return rows + reward_terms(cfg, mesh)


def reward_terms(cfg, mesh):
  fn_args = programs.reward_terms(cfg, mesh)
  if not fn_args:
    return []
  fn, args = fn_args
  return [measure("grpo", "reward_terms", fn, *args)]


def eval_stage(cfg, mesh, graphdef, state, config):
  """The eval loop's sampler (its generators' sampling) and its metric models' jitted embeddings of one
  chunk of images (eval.measure.MetricModels, fp32 as eval loads them)."""
  eval_cfg = cfg.eval
  scfg = programs.eval_sampling(cfg, _PHASES.value)
  rows = rollout(cfg, mesh, graphdef, state, config, stage="eval", prompts=eval_cfg.batch_size, scfg=scfg)
  return rows + [measure("eval", f"{kind}_embed", fn, *args) for kind, (fn, args) in programs.metric_embeddings(cfg, mesh).items()]


def main(argv):
  del argv
  cfg = settings.from_config(_CONFIG.value)  # the typed sections the loops get from main
  mesh = mesh_from_config(cfg)
  graphdef, state, config = programs.abstract_model(cfg, mesh, _PRESET.value, trained=_STAGE.value != "eval")
  run = {"rollout": rollout, "sft": sft_stage, "grpo": grpo_stage, "eval": eval_stage}[_STAGE.value]
  rows = run(cfg, mesh, graphdef, state, config)
  for row in rows:
    row["preset"] = _PRESET.value or cfg.model.preset
    print(json.dumps(row), flush=True)
  last = {"stage": _STAGE.value, "peak_gb": max(r["peak_gb"] for r in rows)}
  if all("peak_bf16_dots_gb" in r for r in rows):
    last["peak_bf16_dots_gb"] = max(r["peak_bf16_dots_gb"] for r in rows)
  print(json.dumps(last), flush=True)


if __name__ == "__main__":
  app.run(main)
