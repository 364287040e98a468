"""QLoRA (pgen_jax.models.quant): a LoRA-adapted tiny Janus whose adapted base kernels are stored int8 or
nf4, over both decoder-layer paths (unrolled slices, remat none; the remat lax.scan, full).

Tolerances. The tiny Janus' kernels are N(0, 0.02) draws, so a quantised kernel's relative error is what
qwix's scheme gives for Gaussian weights: int8 per output channel 0.6%, nf4 in blocks 8.7-9.3%
(WEIGHT_ERR), and the image logits' relative error (max |q - ref| / max |ref|) follows it:
measured 0.61% (int8) and 17.2% (nf4) for the fp32 model with random adapters, 1.1% and 19.9% with them
off (GRPO's reference), the same on both paths. With bf16 compute (itself 1.1-1.4% from fp32) the nf4
base is 16-17% from the bf16 float base. The bounds are 2.3-2.7x the largest measurements: a regression
in the slicing (a layer reading another layer's scales, a transposed scale, a missing dequantisation)
gives errors of order 100%."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from qwix._src.core import qarray

from pgen_jax.models import lora, quant
from pgen_jax.train import grpo
from test_lora import CFG, base, flat, image_logits, prompt_and_tokens, randomize_adapters

WEIGHT_ERR = {"int8": 0.012, "nf4": 0.12}  # per kernel: ||dequant(W) - W|| / ||W||, measured 0.6% / 8.7-9.3%
LOGIT_ERR = {"int8": 0.03, "nf4": 0.45}    # max |logits - base| / max |base|, measured up to 1.1% / 20%


@functools.cache
def adapted(remat: str = "none", dtype=None):
  model = lora.apply_lora(base(remat, dtype), CFG)
  randomize_adapters(model)
  return model


def rel(x, ref) -> float:
  x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
  return float(np.abs(x - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("remat", ["none", "full"])
def test_quantized_base_logits_close_to_the_float_base(remat):
  model = adapted(remat)
  ids, tokens = prompt_and_tokens()
  ref = image_logits(model, ids, tokens)
  with lora.adapters_off(model):
    ref_off = image_logits(model, ids, tokens)
  kernels = {"/".join(map(str, p)): m.kernel[...] for p, m in lora.adapted_modules(model)}
  errs = {}
  for qtype in ("int8", "nf4"):
    qmodel = quant.quantize_base(model, qtype)
    assert quant.base_qtype(qmodel) == qtype and quant.base_qtype(model) is None
    stored = quant.quantized_kernels(qmodel)
    assert set(stored) == set(kernels)
    for path, q in stored.items():
      w = kernels[path]
      assert q.qvalue.shape == w.shape and q.qvalue.dtype == (jnp.int8 if qtype == "int8" else jnp.uint4)
      assert q.scale.shape[0] == w.shape[0] and q.scale.shape[2] == w.shape[2]  # layer axis leading
      werr = float(jnp.linalg.norm(jax.vmap(qarray.dequantize)(q) - w) / jnp.linalg.norm(w))
      assert werr < WEIGHT_ERR[qtype], (path, werr)
    # Everything but the quantised kernels (adapters included) unchanged.
    before, after = flat(nnx.state(model)), flat(nnx.state(qmodel))
    assert set(after) == (set(before) - set(f"{k}/kernel" for k in kernels)
                          | {f"{k}/kernel/array/{x}" for k in kernels for x in ("qvalue", "scale")})
    for k in set(before) & set(after):
      np.testing.assert_array_equal(np.asarray(after[k][...]), np.asarray(before[k][...]), err_msg=k)
    errs[qtype] = rel(image_logits(qmodel, ids, tokens), ref)
    assert errs[qtype] < LOGIT_ERR[qtype], (qtype, errs[qtype])
    with lora.adapters_off(qmodel):  # GRPO's reference: the quantised base, without the LoRA term
      assert rel(image_logits(qmodel, ids, tokens), ref_off) < LOGIT_ERR[qtype]
    assert rel(image_logits(qmodel, ids, tokens), ref_off) > 1e-2  # and the adapters back on
  assert errs["int8"] < errs["nf4"] / 5


def test_stored_bytes_and_compiled_argument_bytes():
  """Quantised kernels take 1/2 (int8) and 1/4 plus scales (nf4) of their bf16 bytes; XLA packs uint4
  two to a byte, so a compiled forward's arguments drop by exactly the kernels' saving."""
  model = adapted()
  x = jnp.zeros((1, 4, model.language_model.cfg.hidden_size), jnp.float32)

  def argument_bytes(m):
    graphdef, state = nnx.split(m.language_model)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
    return f.lower(state, x).compile().memory_analysis().argument_size_in_bytes

  n = sum(m.kernel[...].size for _, m in lora.adapted_modules(model))
  float_bytes = argument_bytes(model)
  for qtype, bits in (("int8", 8), ("nf4", 4)):
    qmodel = quant.quantize_base(model, qtype)
    stored = quant.quantized_kernels(qmodel).values()
    values = sum(q.qvalue.size * bits // 8 for q in stored)
    scales = sum(q.scale.nbytes for q in stored)
    assert values == n * 2 * bits // 16  # bf16: 2 bytes a weight
    # fp32 scales on layers 32..136 wide add 2.8% (int8, one per output channel) and 3.8% (nf4, also one
    # per block of 32..34 input rows) of the bf16 bytes: measured 0.528 and 0.288 of bf16 in all.
    assert (values + scales) / (2 * n) < {"int8": 0.54, "nf4": 0.30}[qtype]
    assert argument_bytes(qmodel) == float_bytes - n * 4 + values + scales


@pytest.mark.parametrize("remat,qtype", [("none", "int8"), ("none", "nf4"), ("full", "nf4")])
def test_adapter_gradients_with_a_quantized_base(remat, qtype):
  """Through GRPO's teacher-forced log-probs: finite, non-zero in every layer, for the adapters alone."""
  model = quant.quantize_base(adapted(remat), qtype)
  ids, tokens = prompt_and_tokens()
  mask, images = jnp.ones_like(ids), jnp.zeros((0, 16, 16, 3), jnp.float32)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=lora.ADAPTERS)

  @nnx.jit
  def step(m, opt):
    grads = nnx.grad(lambda m: -grpo.image_token_logprobs(m, ids, mask, images, tokens).mean(),
                     argnums=nnx.DiffState(0, lora.ADAPTERS))(m)
    opt.update(m, grads)
    return grads

  before = {k: np.asarray(v[...]) for k, v in flat(nnx.state(model)).items()}
  grads = flat(step(model, optimizer))
  assert set(grads) == set(flat(nnx.state(model, lora.ADAPTERS)))
  for path, g in grads.items():
    g = np.asarray(g[...])
    assert np.all(np.isfinite(g)) and np.all(np.abs(g).reshape(len(g), -1).max(1) > 0), path
  after = {k: np.asarray(v[...]) for k, v in flat(nnx.state(model)).items()}
  assert {k for k in before if not np.array_equal(before[k], after[k])} == set(grads)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_bf16_compute(remat):
  """bf16 compute: the scan keeps the stored integers (casts float leaves only), scales are bf16 and
  the activations stay bf16; logits near the bf16 float base's."""
  model = adapted(remat, jnp.bfloat16)
  qmodel = quant.quantize_base(model, "nf4")
  assert all(q.scale.dtype == jnp.bfloat16 for q in quant.quantized_kernels(qmodel).values())
  x = jax.ShapeDtypeStruct((1, 3, 64), jnp.bfloat16)
  hidden = jax.eval_shape(lambda x: qmodel.language_model(x)[0], x)
  assert hidden.dtype == jnp.bfloat16
  ids, tokens = prompt_and_tokens()
  assert rel(image_logits(qmodel, ids, tokens), image_logits(model, ids, tokens)) < LOGIT_ERR["nf4"]


def test_bad_uses():
  with pytest.raises(ValueError, match="base_qtype"):
    quant.quantize_base(adapted(), "int4")
  with pytest.raises(ValueError, match="LoRA adapters"):
    quant.quantize_base(base(), "nf4")
  assert quant.quantize_base(adapted(), "none") is adapted()
  with pytest.raises(ValueError, match="already quantised"):
    quant.quantize_base(quant.quantize_base(adapted(), "int8"), "nf4")
