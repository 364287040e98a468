"""SFT step throughput: tokens/s and model FLOPs utilisation of the jitted, sharded train step.

  python -m pgen_jax.bench.sft --preset=demo --batch=16                          # CPU
  python -m pgen_jax.bench.sft --preset=janus-pro-1b --batch=64 --dtype=bfloat16 --remat
  # each batch x policy in one process, one JSON line each:
  python -m pgen_jax.bench.sft --preset=janus-pro-1b --dtype=bfloat16 --batch=16,64 --micro_batch=16 --remat
      --remat_policy=full,dots_saveable --json=sft.jsonl

Random weights, two warm-up steps; windows of --history images (576 tokens each for Janus-Pro) plus text and the
target's image tokens. MFU = model FLOPs per step / time / peak bf16 FLOPs of the devices, with
model FLOPs = 6 x trained LM parameters x tokens + causal attention + the frozen SigLIP's forward
pass. --pretokenize (on, as `sft.pretokenize` in training) brings the targets as VQ tokens; off, the
step runs the frozen VQ encoder on target images (work not counted in the model FLOPs).
--micro_batch=M accumulates gradients over batch / M slices of M windows (as `sft.grad_accum`). A
setting that fails (out of memory, say) prints one line and the next one still runs.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from pgen_jax import distributed
from pgen_jax.models import Janus, make_mesh, place_on_mesh, preset
from pgen_jax.models.llama import REMAT
from pgen_jax.train import sft, update
from pgen_jax.models.sharding import to_device

_PRESET = flags.DEFINE_string("preset", "demo", "model preset")
_BATCH = flags.DEFINE_list("batch", ["16"], "global batches (windows per step) to time")
_MICRO = flags.DEFINE_integer("micro_batch", 0, "windows per gradient-accumulation slice (0: the whole batch)")
_HISTORY = flags.DEFINE_integer("history", 5, "history images per window")
_TEXT = flags.DEFINE_integer("text", 160, "text tokens per window")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype (params stay fp32)")
_REMAT = flags.DEFINE_bool("remat", False, "recompute decoder layers in the backward pass")
_POLICY = flags.DEFINE_list("remat_policy", ["full"], f"with --remat, the policies to time: {', '.join(REMAT)}")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps (after one warm-up)")
_PRETOKENIZE = flags.DEFINE_bool("pretokenize", True, "targets as VQ tokens (as training's sft.pretokenize)")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "peak TFLOP/s per device (default: from the device kind)")
_JSON = flags.DEFINE_string("json", "", "append one JSON line per setting to this file")

# Dense bf16 peak TFLOP/s per device, by jax device_kind substring.
PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L4": 121, "TPU v4": 275, "TPU v5 lite": 197,
               "TPU v5p": 459, "TPU v6 lite": 918}


def step_flops(cfg, batch: int, seq: int, images: int) -> float:
  t, v = cfg.text, cfg.vision
  d, f, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
  kv = t.num_key_value_heads * t.dim_per_head
  lm = layers * (2 * d * t.num_attention_heads * t.dim_per_head + 2 * d * kv + 3 * d * f)
  heads = cfg.vq.embed_dim * d + d * d + d * cfg.vq.projection_dim + cfg.vq.projection_dim * cfg.vq.num_embeddings
  train = 6 * (lm + heads) * batch * seq + 6 * layers * batch * seq * seq * t.num_attention_heads * t.dim_per_head
  vit = v.num_hidden_layers * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size)
  frozen = 2 * vit * v.num_image_tokens * batch * images
  return float(train + frozen)


def main(argv):
  del argv
  policies, batches = (_POLICY.value if _REMAT.value else ["none"]), [int(b) for b in _BATCH.value]
  if bad := [p for p in policies if p not in REMAT]:
    raise app.UsageError(f"--remat_policy: {', '.join(bad)} unknown; choose from {', '.join(REMAT)}")
  if bad := [b for b in batches if b % (_MICRO.value or b)]:
    raise app.UsageError(f"--micro_batch: {_MICRO.value} does not divide the batch {bad[0]}")
  distributed.initialize()
  cfg = preset(_PRESET.value)
  mesh = make_mesh()
  model = Janus(cfg, nnx.Rngs(0), dtype=jnp.dtype(_DTYPE.value), param_dtype=jnp.float32)
  model = place_on_mesh(model, mesh)
  failed = 0
  for policy in policies:
    for b in batches:
      try:
        row = time_step(model, mesh, b, policy)
      except Exception as err:  # e.g. out of memory at this setting: said, and the next one runs
        failed += 1
        print(f"batch {b}, remat {policy}: failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
        row = {"batch": b, "remat": policy, "error": f"{type(err).__name__}: {str(err)[:300]}"}
      if _JSON.value:
        with open(_JSON.value, "a") as f:
          f.write(json.dumps({"preset": _PRESET.value, "dtype": _DTYPE.value, "pretokenize": _PRETOKENIZE.value,
                              **row}) + "\n")
  if failed:
    sys.exit(1)


def time_step(model, mesh, batch_size: int, policy: str) -> dict:
  """Times the train step at one batch and remat policy; prints a line and returns its figures."""
  cfg = model.config
  micro = _MICRO.value or batch_size
  model.language_model.remat = policy
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
  tx = update.make_optimizer(1e-5, 10, 1000, 0.9, 0.95, 0.0, 1.0)
  state = update.init_state(params, tx, mesh=mesh)
  n, k, s = cfg.num_image_tokens, _HISTORY.value, cfg.vision.image_size
  rng = np.random.default_rng(0)
  block = [cfg.text.vocab_size - 3] + [cfg.image_token_id] * n + [cfg.text.vocab_size - 2]
  row = [1] + block * k + list(rng.integers(3, 200, _TEXT.value)) + [cfg.text.vocab_size - 3]
  ids = np.array([row] * batch_size, np.int32)
  batch = {"ids": ids, "uncond": ids, "mask": np.ones_like(ids),
           "history": rng.integers(0, 255, (batch_size, k, s, s, 3)).astype(np.uint8)}
  if _PRETOKENIZE.value:
    batch["target_tokens"] = rng.integers(0, cfg.vq.num_embeddings, (batch_size, n)).astype(np.int32)
  else:
    batch["target"] = rng.integers(0, 255, (batch_size, s, s, 3)).astype(np.uint8)
  batch = to_device(batch, mesh)
  step = jax.jit(functools.partial(sft.train_step, graphdef, tx, sft.StepConfig(grad_accum=batch_size // micro)),
                 donate_argnums=(0,))
  for _ in range(2):  # compile, and again for the output shardings chosen by the first call
    state, m = step(state, frozen, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = step(state, frozen, batch)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / _STEPS.value
  nnx.update(model, state["params"])  # the step donated the model's own; the next setting starts from these
  del state, m
  seq = ids.shape[1] + n - 1
  flops = step_flops(cfg, batch_size, seq, k)
  kind = jax.devices()[0].device_kind
  peak = _PEAK.value or next((v for key_, v in PEAK_TFLOPS.items() if key_.lower() in kind.lower()), 0.0)
  mfu = flops / dt / (peak * 1e12 * jax.device_count()) if peak else None
  mfu_txt = f"{mfu:.1%}" if peak else "n/a (no peak for this device)"
  print(f"{jax.device_count()} x {kind}; preset {_PRESET.value}; batch {batch_size} x {seq} tokens"
        f"{f' ({batch_size // micro} slices of {micro})' if micro != batch_size else ''}; {_DTYPE.value} compute; "
        f"remat {policy}; pretokenize {_PRETOKENIZE.value}: {dt * 1e3:.0f} ms/step, {batch_size * seq / dt:,.0f} "
        f"tokens/s, {flops / dt / 1e12:.3f} model TFLOP/s, MFU {mfu_txt}")
  return {"batch": batch_size, "micro_batch": micro, "remat": policy, "seq": seq, "device": kind,
          "devices": jax.device_count(), "ms_per_step": dt * 1e3, "tokens_per_s": batch_size * seq / dt,
          "model_tflops": flops / dt / 1e12, "mfu": mfu}


if __name__ == "__main__":
  app.run(main)
