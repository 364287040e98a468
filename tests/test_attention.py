"""The attention kernels against the plain softmax, written out by hand here in numpy (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgen_jax.models import attention as attn


def reference(q, k, v, key_mask, causal_q):
  """Naive GQA softmax attention in float64 numpy; fully masked queries average every key."""
  b, h, t, d = q.shape
  kvh, s = k.shape[1], k.shape[2]
  k, v = np.repeat(k, h // kvh, axis=1), np.repeat(v, h // kvh, axis=1)
  logits = np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(d)
  mask = np.ones((b, 1, t, s), bool)
  if key_mask is not None:
    mask &= key_mask[:, None, None, :]
  if causal_q is not None:
    mask &= (np.arange(s)[None, :] <= causal_q[:, None])[None, None]
  logits = np.where(mask, logits, -1e30)
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(-1, keepdims=True)
  with np.errstate(divide="ignore"):  # queries that see no key: lse = -inf
    lse = np.log(np.exp(np.where(mask, np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(d), -np.inf)).sum(-1))
  return np.einsum("bhts,bhsd->bhtd", p, v), lse


def inputs(seed, b=2, h=4, kvh=2, t=37, s=37, d=8, left_pad=(5, 0)):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, h, t, d)).astype(np.float32)
  k = rng.normal(size=(b, kvh, s, d)).astype(np.float32)
  v = rng.normal(size=(b, kvh, s, d)).astype(np.float32)
  key_mask = np.ones((b, s), bool)
  for i, pad in enumerate(left_pad):
    key_mask[i, :pad] = False
  return q, k, v, key_mask


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
@pytest.mark.parametrize("case", ["causal_padded", "prefix_no_causal", "decode_offset", "no_mask"])
def test_kernels_equal_the_plain_softmax(impl, case):
  if case == "causal_padded":  # a left-padded prompt attending causally (GQA: 4 heads, 2 kv heads)
    q, k, v, km = inputs(0)
    causal = np.arange(37)
  elif case == "prefix_no_causal":  # G samples' queries over a shared, padded prefix
    q, k, v, km = inputs(1, t=24, s=41, left_pad=(0, 9))
    causal = None
  elif case == "decode_offset":  # 3 new queries at positions 30..32 of a 45-key cache
    q, k, v, km = inputs(2, t=3, s=45, left_pad=(2, 7))
    causal = 30 + np.arange(3)
  else:
    q, k, v, _ = inputs(3, kvh=4)
    km, causal = None, None
  want, want_lse = reference(q, k, v, km, causal)
  out, lse = attn.attend(*map(jnp.asarray, (q, k, v)), key_mask=None if km is None else jnp.asarray(km),
                         causal_q=None if causal is None else jnp.asarray(causal), impl=impl,
                         block_q=8, block_k=16, return_lse=True)
  real = np.isfinite(want_lse)  # queries that see at least one key
  np.testing.assert_allclose(np.asarray(out)[np.broadcast_to(real[..., None], want.shape)],
                             want[np.broadcast_to(real[..., None], want.shape)], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(lse)[real], want_lse[real], rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("case", ["causal_padded", "prefix_no_causal"])
def test_cudnn_call_pads_odd_lengths_and_keeps_the_layout(case):
  """The cuDNN kernel refuses odd lengths under a mask; `_cudnn` pads both to 64 and slices back. Its
  padding, layouts and (B, T, N) log-sum-exp, run here through jax's XLA implementation of the same call."""
  if case == "causal_padded":
    q, k, v, km = inputs(7, t=37, s=37, d=16)
    causal = np.arange(37)
  else:
    q, k, v, km = inputs(8, t=24, s=41, d=16, left_pad=(0, 9))
    causal = None
  want, want_lse = reference(q, k, v, km, causal)
  out, lse = attn._cudnn(*map(jnp.asarray, (q, k, v)), jnp.asarray(km), None if causal is None else jnp.asarray(causal),
                         True, implementation="xla")
  real = np.isfinite(want_lse)
  np.testing.assert_allclose(np.asarray(out)[np.broadcast_to(real[..., None], want.shape)],
                             want[np.broadcast_to(real[..., None], want.shape)], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(lse)[real], want_lse[real], rtol=1e-5, atol=1e-5)


def test_blockwise_gradients_equal_the_plain_kernel():
  q, k, v, km = inputs(4, t=29, s=29)
  causal = jnp.arange(29)

  def loss(impl, q, k, v):
    out = attn.attend(q, k, v, key_mask=jnp.asarray(km), causal_q=causal, impl=impl, block_q=8, block_k=8)
    return jnp.sum(jnp.sin(out) * jnp.asarray(km)[:, None, :, None])

  want = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(*map(jnp.asarray, (q, k, v)))
  got = jax.grad(lambda *a: loss("blockwise", *a), argnums=(0, 1, 2))(*map(jnp.asarray, (q, k, v)))
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_merge_of_disjoint_key_sets_is_the_joint_softmax():
  q, k, v, _ = inputs(5, t=6, s=30, left_pad=(0, 0))
  want, _ = reference(q, k, v, None, None)
  parts = [attn.attend(jnp.asarray(q), jnp.asarray(k[:, :, a:z]), jnp.asarray(v[:, :, a:z]), impl="xla",
                       return_lse=True) for a, z in ((0, 11), (11, 30))]
  np.testing.assert_allclose(np.asarray(attn.merge(parts)[0]), want, rtol=1e-5, atol=1e-5)


def test_blockwise_holds_no_full_logits():
  """At T = S = 2048 the plain kernel's fp32 logits are 2048^2 * 4 B = 16 MiB per head; blockwise
  with 256-blocks must need far less than one head's worth of temporaries."""
  q = jax.ShapeDtypeStruct((1, 1, 2048, 64), jnp.float32)
  km = jax.ShapeDtypeStruct((1, 2048), jnp.bool_)
  f = lambda impl: jax.jit(lambda q, k, v, m: attn.attend(q, k, v, key_mask=m, causal_q=jnp.arange(2048),
                                                          impl=impl, block_q=256, block_k=256))
  temp = lambda impl: f(impl).lower(q, q, q, km).compile().memory_analysis().temp_size_in_bytes
  assert temp("xla") >= 16 * 2 ** 20
  assert temp("blockwise") < 4 * 2 ** 20, temp("blockwise")
  # Nor does its backward pass: it keeps q, k, v, the output and lse, not per-block carries.
  grad = lambda impl: jax.jit(jax.grad(lambda q, k, v, m: attn.attend(
      q, k, v, key_mask=m, causal_q=jnp.arange(2048), impl=impl, block_q=256, block_k=256).sum(), argnums=(0, 1, 2)))
  grad_temp = lambda impl: grad(impl).lower(q, q, q, km).compile().memory_analysis().temp_size_in_bytes
  assert grad_temp("xla") >= 16 * 2 ** 20
  assert grad_temp("blockwise") < 6 * 2 ** 20, grad_temp("blockwise")


def test_auto_picks_per_platform_and_shape():
  small = jnp.zeros((1, 2, 1, 8)), jnp.zeros((1, 2, 100, 8))
  big = jnp.zeros((1, 2, 1024, 8)), jnp.zeros((1, 2, 1024, 8))
  assert attn.choose(small[0], small[1], None, False) == "xla"
  assert attn.choose(big[0], big[1], jnp.arange(1024), False) == "blockwise"  # this process: CPU
  with pytest.raises(ValueError, match="attention implementation 'flash'"):
    attn.attend(*small, small[1], impl="flash")


BF16, FP16, FP32 = jnp.bfloat16, jnp.float16, jnp.float32
OLD, NEW = (0, 10, 2), (0, 12, 1)


@pytest.mark.parametrize("platform, version, dtype, d, t, s, causal, lse, want", [
    ("gpu", OLD, BF16, 128, 1024, 1024, True, False, "cudnn"),  # long self-attention: cuDNN on every jax
    ("gpu", OLD, BF16, 128, 1024, 1024, True, True, "blockwise"),  # jax 0.10 with the lse: not cuDNN
    ("gpu", (0, 11, 0), BF16, 128, 1024, 1024, True, True, "cudnn"),  # from jax 0.11 on, with the lse too
    ("gpu", NEW, BF16, 128, 512, 1097, False, True, "cudnn"),  # samples over a shared prefix, merged by lse
    ("gpu", NEW, FP16, 64, 1024, 1024, True, True, "cudnn"),
    ("gpu", NEW, FP32, 128, 1024, 1024, True, False, "blockwise"),  # cuDNN's flash kernel: bf16/fp16 only
    ("gpu", NEW, BF16, 256, 1024, 1024, True, False, "blockwise"),  # head_dim over 128
    ("gpu", NEW, BF16, 128, 1, 575, True, True, "xla"),  # a decode step
    ("gpu", NEW, BF16, 128, 64, 256, True, True, "xla"),  # 2^14 logits: too few for blocks
    ("tpu", NEW, BF16, 128, 1024, 1024, True, False, "pallas"),
    ("tpu", NEW, BF16, 128, 1024, 1024, True, True, "blockwise"),  # the Pallas kernel returns no lse
    ("tpu", NEW, BF16, 128, 512, 1097, False, False, "blockwise"),  # nor takes a prefix without causal limit
    ("tpu", NEW, BF16, 128, 1000, 1000, True, False, "blockwise"),  # nor lengths off multiples of 128
    ("cpu", NEW, BF16, 128, 1024, 1024, True, True, "blockwise"),
    ("cpu", NEW, FP32, 128, 1, 575, True, False, "xla"),
])
def test_auto_by_platform_and_jax_version(platform, version, dtype, d, t, s, causal, lse, want):
  q, k = jax.ShapeDtypeStruct((2, 16, t, d), dtype), jax.ShapeDtypeStruct((2, 4, s, d), dtype)
  causal_q = np.arange(t) + s - t if causal else None
  assert attn.choose(q, k, causal_q, lse, platform=platform, jax_version=version) == want


def test_cudnn_call_gradients_through_the_lse_of_merged_parts():
  """jax's fused attention stops the lse's gradient; `_cudnn` adds it back, so merged prefix and own
  attention (the GRPO update) differentiate as the plain kernel does. Run through jax's XLA implementation
  of the same call."""
  q, k, v, km = inputs(9, t=10, s=33, d=16, left_pad=(0, 4))

  def loss(impl, q, k, v):
    def part(k, v, key_mask, causal_q):
      if impl == "cudnn":
        return attn._cudnn(q, k, v, key_mask, causal_q, True, implementation="xla")
      return attn.attend(q, k, v, key_mask=key_mask, causal_q=causal_q, impl=impl, return_lse=True)
    parts = [part(k[:, :, :20], v[:, :, :20], jnp.asarray(km[:, :20]), None),
             part(k[:, :, 20:], v[:, :, 20:], None, jnp.arange(10) + 3)]
    return jnp.sum(jnp.cos(attn.merge(parts)[0]))

  grads = lambda impl: jax.jit(jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2)))(*map(jnp.asarray, (q, k, v)))
  got, want = grads("cudnn"), grads("xla")
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_blockwise_gradients_through_the_lse_of_merged_parts():
  """The GRPO update merges prefix and own attention by their lse: gradients flow through both."""
  q, k, v, km = inputs(6, t=10, s=33, left_pad=(0, 4))

  def loss(impl, q, k, v):
    parts = [attn.attend(q, k[:, :, :20], v[:, :, :20], key_mask=jnp.asarray(km[:, :20]), impl=impl, block_q=4,
                         block_k=8, return_lse=True),
             attn.attend(q, k[:, :, 20:], v[:, :, 20:], causal_q=jnp.arange(10) + 3, impl=impl, block_q=4,
                         block_k=8, return_lse=True)]
    return jnp.sum(jnp.cos(attn.merge(parts)[0]))

  want = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(*map(jnp.asarray, (q, k, v)))
  got = jax.grad(lambda *a: loss("blockwise", *a), argnums=(0, 1, 2))(*map(jnp.asarray, (q, k, v)))
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
