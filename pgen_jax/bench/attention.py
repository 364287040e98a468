"""The attention kernels on the devices at hand: each against the fp32 plain softmax, then timed.

  python -m pgen_jax.bench.attention                                   # GPU: xla, blockwise, cudnn
  python -m pgen_jax.bench.attention --impls=xla,blockwise --t=512      # a CPU smoke run

Checks (bf16 inputs, GQA 16 query heads over 4 kv heads, left-padded rows): causal self-attention
and a prefix attended without a causal limit, with log-sum-exp; outputs, lse and the gradients of
random projections of the output and the lse (merged partial attentions differentiate through it),
as ||x - ref|| / ||ref|| against `xla` on the same inputs in fp32 (itself tested against numpy in
tests/test_attention.py), and, last, the lse's largest absolute error ('lse abs': from jax 0.11 on
'auto' merges a shared prefix with a continuation by cuDNN's lse, so it must be close to fp32, not
bf16, whose spacing is 3e-2 at lse ~ 7). Rows that see no key are left out: their output is never read. Then forward + backward time at the SFT shape (causal self-attention
over --t tokens, 16 heads of 128).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pgen_jax.models import attention as attn

_IMPLS = flags.DEFINE_list("impls", ["xla", "blockwise", "cudnn"], "kernels to check and time")
_CHECK_T = flags.DEFINE_integer("check_t", 1024, "query length of the checks (the prefix case: half, over 1.07x keys)")
_T = flags.DEFINE_integer("t", 3584, "sequence length of the timed causal self-attention")
_BATCH = flags.DEFINE_integer("batch", 4, "batch of the timed attention")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls (median)")


def case(rng, b, h, kvh, t, s, d, pads):
  q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in
             ((b, h, t, d), (b, kvh, s, d), (b, kvh, s, d)))
  mask = np.ones((b, s), bool)
  for i, p in enumerate(pads):
    mask[i, :p] = False
  return q, k, v, jnp.asarray(mask)


def rel(x, ref, rows=...):
  x, ref = np.asarray(x, np.float64)[rows], np.asarray(ref, np.float64)[rows]
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref)) if np.isfinite(x).all() else float("nan")


def check(impl: str, rng) -> dict:
  out = {}
  n = _CHECK_T.value
  for name, t, s, causal in (("causal", n, n, True), ("prefix", n // 2, n + n // 14, False)):
    q, k, v, mask = case(rng, 2, 16, 4, t, s, 128, (n // 28, 0))
    causal_q = jnp.arange(t) if causal else None
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    u = jnp.asarray(rng.normal(size=q.shape[:3]), jnp.float32)
    seen = attn.visible(mask, causal_q, 2, t, s).any(-1)  # (B, 1, T): rows that see at least one key

    def loss(q, k, v, impl, dtype):
      o, lse = attn.attend(q.astype(dtype), k.astype(dtype), v.astype(dtype), key_mask=mask, causal_q=causal_q,
                           impl=impl, return_lse=True)
      return (jnp.sum(jnp.where(seen[..., None], o.astype(jnp.float32) * w, 0.0))
              + jnp.sum(jnp.where(seen, lse * u, 0.0))), (o, lse)

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=(3, 4))
    (_, (o, lse)), g = f(q, k, v, impl, jnp.bfloat16)
    (_, (o_ref, lse_ref)), g_ref = f(q, k, v, "xla", jnp.float32)
    rows = np.broadcast_to(np.asarray(seen), lse_ref.shape)
    out[f"{name}_out"] = rel(o, o_ref, rows)
    out[f"{name}_lse"] = rel(lse, lse_ref, rows)
    out[f"{name}_lse_abs"] = float(np.abs(np.asarray(lse, np.float64) - np.asarray(lse_ref, np.float64))[rows].max())
    out[f"{name}_grad"] = max(rel(a, b) for a, b in zip(g, g_ref))
  return out


def timed(impl: str, rng) -> float:
  b, t = _BATCH.value, _T.value
  q, k, v, mask = case(rng, b, 16, 16, t, t, 128, (0,) * b)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  causal_q = jnp.arange(t)
  f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn.attend(q, k, v, key_mask=mask, causal_q=causal_q, impl=impl)
                                               .astype(jnp.float32)), argnums=(0, 1, 2)))
  jax.block_until_ready(f(q, k, v))
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(f(q, k, v))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  b, t = _BATCH.value, _T.value
  flops = 4 * b * 16 * t * t * 128 / 2 * 3.5  # causal: half the logits; backward about 2.5x forward
  print(f"{jax.devices()[0].device_kind}; bf16 against fp32 xla; timed: batch {b}, {t} tokens causal, 16 x 128")
  print(f"{'impl':>9} {'causal out':>10} {'lse':>8} {'grad':>8} {'prefix out':>10} {'lse':>8} {'grad':>8} "
        f"{'fwd+bwd ms':>10} {'TFLOP/s':>8} {'lse abs: causal':>15} {'prefix':>8}")
  for impl in _IMPLS.value:
    try:
      e = check(impl, rng)
      dt = timed(impl, rng)
    except Exception as err:  # one kernel missing on this platform must not hide the others
      print(f"{impl:>9} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
      continue
    print(f"{impl:>9} {e['causal_out']:10.2e} {e['causal_lse']:8.1e} {e['causal_grad']:8.1e} {e['prefix_out']:10.2e} "
          f"{e['prefix_lse']:8.1e} {e['prefix_grad']:8.1e} {dt * 1e3:10.2f} {flops / dt / 1e12:8.1f} "
          f"{e['causal_lse_abs']:15.1e} {e['prefix_lse_abs']:8.1e}")


if __name__ == "__main__":
  app.run(main)
