"""The language model's attention kernels, chosen per platform.

Layout is heads-major throughout: q (B, H, T, D), k and v (B, KVH, S, D) with H % KVH == 0 (GQA).
That is the layout of the KV cache too, so a decode step's dots read the cache as it lies (no
per-step transpose or copy of the cache).

Which keys a query sees is given by `key_mask` (B, S), False for padding, and `causal_q` (T,): the
index of each query in key coordinates (query t sees keys s <= causal_q[t]); None for no causal
limit (a continuation attending its shared prefix). A query that sees no key at all (left padding)
gets the uniform average over all keys, as the plain softmax over large negative logits gives: its
output is never read, but it stays finite.

- xla: materialises fp32 (B, H, T, S) logits; right for short queries (decode steps).
- blockwise: flash attention in plain JAX: online softmax over key blocks for each query block;
  the backward pass (a custom VJP) recomputes each block's probabilities from the saved
  log-sum-exp, so neither pass holds (T, S) logits and the forward saves only its output and lse.
  Portable: CPU, and the fallback anywhere.
- cudnn: cuDNN's fused flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`
  (GPU, bf16/fp16); with the log-sum-exp, jax's cuDNN wrapper beneath it, for cuDNN's fp32 lse.
- pallas: the Pallas TPU flash-attention kernel, padding as segment ids (TPU, self-attention).
- auto: cudnn on GPU where it applies (with the log-sum-exp from jax 0.11 on), pallas on TPU for causal
  self-attention without the lse, xla for short queries, else blockwise.

With `return_lse`, the log-sum-exp of each query's logits (B, H, T) comes back too, so that partial
attentions over disjoint key sets (a shared prefix and a sample's own tokens) merge exactly
(`merge`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "blockwise", "cudnn", "pallas")
NEG = float(jnp.finfo(jnp.float32).min)
# Below this many logits per (batch, head), 'auto' keeps the plain kernel: blocks would only add loops.
SMALL = 1 << 16


def attend(q, k, v, *, key_mask=None, causal_q=None, impl: str = "auto", block_q: int = 512,
           block_k: int = 512, return_lse: bool = False):
  """Softmax attention; returns out (B, H, T, D) in q's dtype, and lse (B, H, T) fp32 if asked."""
  if impl not in IMPLS:
    raise ValueError(f"attention implementation {impl!r}: use one of {', '.join(IMPLS)}")
  if impl == "auto":
    impl = choose(q, k, causal_q, return_lse)
  if impl == "xla":
    return _xla(q, k, v, key_mask, causal_q, return_lse)
  if impl == "blockwise":
    return _blockwise(q, k, v, key_mask, causal_q, return_lse, block_q, block_k)
  if impl == "cudnn":
    return _cudnn(q, k, v, key_mask, causal_q, return_lse)
  return _pallas(q, k, v, key_mask, causal_q, return_lse)


def choose(q, k, causal_q, return_lse: bool, *, platform: str | None = None,
           jax_version: tuple[int, ...] | None = None) -> str:
  """The kernel 'auto' runs; `platform` and `jax_version` default to this process's (tests name others)."""
  t, s = q.shape[2], k.shape[2]
  if t * s <= SMALL or t == 1:
    return "xla"
  platform = platform or jax.devices()[0].platform
  jax_version = jax_version or jax.__version_info__
  # cuDNN where the lse is needed (prefix + continuation merges: GRPO update, old log-probs, prefill) has
  # run on a card only with jax 0.11.2 (its lse within 6e-5 of fp32 on an H200, docs/benchmarks.md): the
  # jax 0.10 pin (Python 3.11) keeps the blockwise kernel there.
  fits_cudnn = q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128
  if platform == "gpu" and fits_cudnn and (not return_lse or jax_version >= (0, 11)):
    return "cudnn"
  if platform == "tpu" and not return_lse and causal_q is not None and t == s and t % 128 == 0:
    return "pallas"
  return "blockwise"


def visible(key_mask, causal_q, b: int, t: int, s: int, k_start=0):
  """Boolean (B or 1, 1, T, S') mask of the keys k_start .. k_start + s - 1."""
  m = jnp.ones((1, 1, 1, s), bool)
  if key_mask is not None:
    m = m & key_mask.astype(bool)[:, None, None, :]
  if causal_q is not None:
    m = m & ((k_start + jnp.arange(s))[None, :] <= causal_q[:, None])[None, None]
  return m


def _grouped(q, kvh):
  b, h, t, d = q.shape
  return q.reshape(b, kvh, h // kvh, t, d)


def _xla(q, k, v, key_mask, causal_q, return_lse):
  b, h, t, d = q.shape
  kvh, s = k.shape[1], k.shape[2]
  logits = jnp.einsum("bkgtd,bksd->bkgts", _grouped(q, kvh), k,
                      preferred_element_type=jnp.float32) * (d ** -0.5)
  mask = visible(key_mask, causal_q, b, t, s)[:, :, None]
  logits = jnp.where(mask, logits, NEG)
  lse = jax.nn.logsumexp(logits, axis=-1)
  probs = jnp.exp(logits - lse[..., None]).astype(v.dtype)
  out = jnp.einsum("bkgts,bksd->bkgtd", probs, v).reshape(b, h, t, d).astype(q.dtype)
  return (out, lse.reshape(b, h, t)) if return_lse else out


def _blockwise(q, k, v, key_mask, causal_q, return_lse, block_q, block_k):
  b, h, t, d = q.shape
  kvh, s = k.shape[1], k.shape[2]
  bq, bk = min(block_q, t), min(block_k, s)
  nq, nk = -(-t // bq), -(-s // bk)
  pad_t, pad_s = nq * bq - t, nk * bk - s
  qg = jnp.pad(_grouped(q, kvh), ((0, 0),) * 3 + ((0, pad_t), (0, 0)))
  kp = jnp.pad(k, ((0, 0), (0, 0), (0, pad_s), (0, 0)))
  vp = jnp.pad(v, ((0, 0), (0, 0), (0, pad_s), (0, 0)))
  # Keys padding the last block are masked like padding (a query that sees no real key averages
  # them too: its output is never read).
  km = jnp.ones((1, s), bool) if key_mask is None else key_mask.astype(bool)
  km = jnp.pad(km, ((0, 0), (0, pad_s)))
  big = jnp.iinfo(jnp.int32).max
  cq = jnp.full((nq * bq,), big, jnp.int32) if causal_q is None else jnp.pad(causal_q.astype(jnp.int32), (0, pad_t))
  out, lse = _flash(qg, kp, vp, km, cq, bq, bk)
  out = out[..., :t, :].reshape(b, h, t, d).astype(q.dtype)
  lse = lse[..., :t].reshape(b, h, t)
  return (out, lse) if return_lse else out


def _block_logits(qi, kj, mj, ci, j, bk):
  scale = qi.shape[-1] ** -0.5
  logits = jnp.einsum("bkgtd,bksd->bkgts", qi, kj, preferred_element_type=jnp.float32) * scale
  mask = visible(mj, ci, qi.shape[0], qi.shape[3], bk, j * bk)[:, :, None]
  return jnp.where(mask, logits, NEG)


def _flash_forward(qg, kp, vp, km, cq, bq, bk):
  """Online softmax over key blocks for each query block: out (B, K, G, T, D) fp32 and lse."""
  nq, nk = qg.shape[3] // bq, kp.shape[2] // bk

  def one_query_block(i):
    qi = jax.lax.dynamic_slice_in_dim(qg, i * bq, bq, axis=3)
    ci = jax.lax.dynamic_slice_in_dim(cq, i * bq, bq)

    def key_block(carry, j):
      m, l, acc = carry
      kj = jax.lax.dynamic_slice_in_dim(kp, j * bk, bk, axis=2)
      vj = jax.lax.dynamic_slice_in_dim(vp, j * bk, bk, axis=2)
      logits = _block_logits(qi, kj, jax.lax.dynamic_slice_in_dim(km, j * bk, bk, axis=1), ci, j, bk)
      m_new = jnp.maximum(m, logits.max(-1))
      p = jnp.exp(logits - m_new[..., None])
      corr = jnp.exp(m - m_new)
      acc = acc * corr[..., None] + jnp.einsum("bkgts,bksd->bkgtd", p.astype(vp.dtype), vj,
                                               preferred_element_type=jnp.float32)
      return (m_new, l * corr + p.sum(-1), acc), None

    shape = qi.shape[:-1]
    init = (jnp.full(shape, NEG, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(qi.shape, jnp.float32))
    (m, l, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nk))
    return acc / l[..., None], m + jnp.log(l)

  out, lse = jax.lax.map(one_query_block, jnp.arange(nq))  # (nq, B, K, G, bq, ...)
  b, kvh, g, _, d = qg.shape
  return (jnp.moveaxis(out, 0, 3).reshape(b, kvh, g, nq * bq, d), jnp.moveaxis(lse, 0, 3).reshape(b, kvh, g, nq * bq))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(qg, kp, vp, km, cq, bq, bk):
  return _flash_forward(qg, kp, vp, km, cq, bq, bk)


def _flash_fwd(qg, kp, vp, km, cq, bq, bk):
  out, lse = _flash_forward(qg, kp, vp, km, cq, bq, bk)
  return (out, lse), (qg, kp, vp, km, cq, out, lse)


def _flash_bwd(bq, bk, res, grads):
  """Flash attention's backward: each block's probabilities recomputed from the saved lse, so
  only q, k, v, the output and lse are kept from the forward. The lse's own cotangent (merged
  partial attentions) enters as dlse * p."""
  qg, kp, vp, km, cq, out, lse = res
  dout, dlse = grads
  nq, nk = qg.shape[3] // bq, kp.shape[2] // bk
  scale = qg.shape[-1] ** -0.5
  delta = jnp.sum(dout * out, axis=-1)
  at = lambda x, i, n, axis: jax.lax.dynamic_slice_in_dim(x, i * n, n, axis=axis)

  def key_block(dq, j):
    kj, vj, mj = at(kp, j, bk, 2), at(vp, j, bk, 2), at(km, j, bk, 1)

    def query_block(carry, i):
      dk, dv, dq = carry
      qi, doi = at(qg, i, bq, 3), at(dout, i, bq, 3)
      p = jnp.exp(_block_logits(qi, kj, mj, at(cq, i, bq, 0), j, bk) - at(lse, i, bq, 3)[..., None])
      dv = dv + jnp.einsum("bkgts,bkgtd->bksd", p, doi)
      dp = jnp.einsum("bkgtd,bksd->bkgts", doi, vj.astype(jnp.float32))
      ds = p * (dp - at(delta, i, bq, 3)[..., None] + at(dlse, i, bq, 3)[..., None])
      dq_i = at(dq, i, bq, 3) + jnp.einsum("bkgts,bksd->bkgtd", ds, kj.astype(jnp.float32)) * scale
      dk = dk + jnp.einsum("bkgts,bkgtd->bksd", ds, qi.astype(jnp.float32)) * scale
      return (dk, dv, jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=3)), None

    zeros = jnp.zeros(kj.shape, jnp.float32)
    (dk, dv, dq), _ = jax.lax.scan(query_block, (zeros, zeros, dq), jnp.arange(nq))
    return dq, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(qg.shape, jnp.float32), jnp.arange(nk))
  blocks = lambda x: jnp.moveaxis(x, 0, 2).reshape(kp.shape)  # (nk, B, K, bk, D) -> (B, K, S, D)
  return dq.astype(qg.dtype), blocks(dk).astype(kp.dtype), blocks(dv).astype(vp.dtype), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _cudnn(q, k, v, key_mask, causal_q, return_lse, implementation="cudnn"):
  """cuDNN's fused attention; `implementation="xla"` runs the same padding and layout on any platform."""
  b, h, t, d = q.shape
  s = k.shape[2]
  # cuDNN refuses odd lengths with a mask in training: pad both to multiples of 64. Padded keys are
  # never visible; padded queries see every real key (finite, and sliced off).
  tp, sp = -t % 64, -s % 64
  mask = jnp.broadcast_to(visible(key_mask, causal_q, b, t, s), (b, 1, t, s))
  real_keys = jnp.ones((b, 1, tp, s), bool) if key_mask is None else \
      jnp.broadcast_to(key_mask.astype(bool)[:, None, None, :], (b, 1, tp, s))
  mask = jnp.pad(jnp.concatenate([mask, real_keys], axis=2), ((0, 0), (0, 0), (0, 0), (0, sp)))
  # cuDNN takes (B, T, N, D); the mask covers left padding, which sequence lengths cannot say.
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, 0), (0, n), (0, 0))).transpose(0, 2, 1, 3)
  q, k, v = pad(q, tp), pad(k, sp), pad(v, sp)
  if not return_lse:
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)[:, :t].transpose(0, 2, 1, 3)
  out, lse = _fused_with_lse(q, k, v, mask, implementation)
  return out[:, :t].transpose(0, 2, 1, 3), lse[:, :t].transpose(0, 2, 1)


def _fused(q, k, v, mask, implementation):
  """out (B, T, N, D) and lse (B, T, N) fp32. jax.nn.dot_product_attention casts cuDNN's fp32 softmax
  statistics to the output dtype (bf16) in every jax from 0.10 to 0.12, too coarse to merge partial
  attentions exactly, so cuDNN is called here through the wrapper beneath it, which returns them as
  they are, (B, N, T)."""
  if implementation == "cudnn":
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_attention  # GPU only
    out, lse = cudnn_attention(q, k, v, mask=mask, scale=q.shape[-1] ** -0.5, return_residual=True)
    return out, lse.transpose(0, 2, 1).astype(jnp.float32)
  out, lse = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation, return_residual=True)
  return out, lse.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_with_lse(q, k, v, mask, implementation):
  return _fused(q, k, v, mask, implementation)


def _fused_with_lse_fwd(q, k, v, mask, implementation):
  res, pullback = jax.vjp(lambda q, k, v: _fused(q, k, v, mask, implementation), q, k, v)
  return res, (q, k, mask, pullback)


def _fused_with_lse_bwd(implementation, res, grads):
  """jax's fused attention stops the lse's gradient, but merged partial attentions (the GRPO update)
  need it: d lse_t / d q_t = scale * sum_s p_ts k_s and d lse_t / d k_s = scale * sum_t p_ts q_t, that
  is the attention of q over k with k as the values, and that attention's pullback to its values."""
  q, k, mask, pullback = res
  dout, dlse = grads
  dq, dk, dv = pullback((dout, jnp.zeros_like(dlse)))
  g = dlse[..., None] * q.shape[-1] ** -0.5  # (B, T, N, 1)
  pk, to_values = jax.vjp(lambda x: _fused(q, k, x, mask, implementation)[0], k)
  (dk_lse,) = to_values((g * q).astype(q.dtype))
  dq = (dq.astype(jnp.float32) + g * pk.astype(jnp.float32)).astype(dq.dtype)
  return dq, (dk.astype(jnp.float32) + dk_lse.astype(jnp.float32)).astype(dk.dtype), dv, None


_fused_with_lse.defvjp(_fused_with_lse_fwd, _fused_with_lse_bwd)


def _pallas(q, k, v, key_mask, causal_q, return_lse):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa  # lazy: TPU-only kernel, imported on use
  if return_lse or causal_q is None:
    raise ValueError("the pallas kernel covers causal self-attention without lse; use blockwise")
  b, h, t, d = q.shape
  kvh = k.shape[1]
  k, v = jnp.repeat(k, h // kvh, axis=1), jnp.repeat(v, h // kvh, axis=1)
  seg = (jnp.ones((b, t), jnp.int32) if key_mask is None else key_mask.astype(jnp.int32))
  # Left padding: a pad query (segment 0) sees the pad keys before it, so it stays finite.
  return fa.flash_attention(q, k, v, segment_ids=fa.SegmentIds(q=seg, kv=seg), causal=True,
                            sm_scale=d ** -0.5)


def merge(parts):
  """Exact softmax attention over the union of disjoint key sets from [(out, lse), ...] parts."""
  lses = jnp.stack([lse for _, lse in parts])
  total = jax.nn.logsumexp(lses, axis=0)
  out = sum(o.astype(jnp.float32) * jnp.exp(lse - total)[..., None] for o, lse in parts)
  return out.astype(parts[0][0].dtype), total
