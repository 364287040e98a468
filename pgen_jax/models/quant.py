"""QLoRA: the frozen base kernels of a LoRA-adapted Janus stored quantised (int8 or nf4), through qwix.

`quantize_base(model, "nf4")` (model from lora.apply_lora) returns a copy whose adapted projections'
stacked kernels (layers, in, out) are replaced by qwix's PTQ form, so each forward computes
x dequant(W) + (alpha / rank) (x A) B, qwix's QLoRA; nothing else of the model changes.

How qwix stores and consumes a PTQ weight. `qwix.PtqProvider` replaces a module's `kernel` by a
`ptq.WithAux(array=QArray(qvalue, scale), how)`: qvalue has the kernel's shape in the quantised storage
dtype (int8, or uint4 for nf4: 4-bit bucket indices into the NormalFloat table), scale has the same rank,
one value per output channel (and, tiled, one per block of `tile` input rows); `how` (HowToQuantize) is
static pytree metadata. Its leaves are nnx.Params, so the module's state holds kernel/array/qvalue and
kernel/array/scale. Under interception, nnx.Linear reads `self.kernel[...]` (WithAux maps the index over
its leaves), qwix's promote_dtype lets the WithAux through, and PtqProvider.dot_general, seeing a WithAux
rhs and a rule with weight_qtype, hands its QArray to qwix's dot_general; with a float lhs that always
takes the "slow" path: dequantize (qvalue -> float, times the broadcast scale) then an ordinary
dot_general, which XLA fuses. LoraProvider adds the LoRA term on top, finding the module's
kernel_lora_a/_b as before (flax_util.find_param accepts a WithAux as the module's weight).

Why this slices per layer. Everything in the WithAux that is an array is a leaf with the layer axis
leading: we quantise the stacked kernel layer by layer (vmap of qwix's own quantize with the per-layer
HowToQuantize qwix would derive for the Linear's dot_general), so qvalue is (L, in, out) and scale
(L, in / tile or 1, out). llama.py's `_layers` (lax.split of every leaf) and `_scanned` (lax.scan over
the leaves) therefore hand layer i the QArray of its own kernel, and nnx.merge rebuilds the per-layer
WithAux from the graphdef (which carries `how`). The only requirement on llama.py: the scan's cast of the
stacked matrices to the compute dtype must leave integer leaves alone (it does so for float leaves only).

The qwix rule. apply_lora's LoraRule has no weight_qtype (a float base): PtqProvider then calls
lax.dot_general on the WithAux directly, which fails. So the language model is re-intercepted with the
same rule plus weight_qtype (and tile_size for nf4). lora.adapters_off swaps the language model's class
back to qwix's `_unquantized_type`, which for a plain base is LlamaModel itself; with a quantised base
that class could not read the WithAux kernels, so here it is a LlamaModel intercepted by a PTQ-only
provider (the same rule as a plain QuantizationRule: dequantising matmuls, no LoRA term).

Scales are stored in the compute dtype when the model has one (bf16: what the kernel would be cast to
anyway, and half the scale bytes), else in the kernel's dtype. nf4 uses blocks of `NF4_TILE` input rows
(QLoRA's 64) where the input size allows, else the largest divisor of it up to 64.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import qwix
from flax import nnx
from qwix._src.core import qarray
from qwix._src.providers import ptq

from pgen_jax.models import lora

QTYPES = ("none", "int8", "nf4")
NF4_TILE = 64


def _tile(din: int, tile: int) -> int:
  """The block of input rows an nf4 scale covers: `tile`, or the largest divisor of din below it."""
  return max(t for t in range(1, min(tile, din) + 1) if din % t == 0)


def how_to_quantize(qtype: str, din: int, tile: int = NF4_TILE) -> qarray.HowToQuantize:
  """What qwix derives for one layer's kernel (in, out) as a Linear's rhs: a scale per output channel,
  and for nf4 per block of input rows too."""
  qt = jnp.int8 if qtype == "int8" else qtype
  tiled = {0: _tile(din, tile)} if qtype == "nf4" else {}
  return qarray.HowToQuantize(qtype=qt, channelwise_axes=(1,), tiled_axes=tiled)


def _quantize_stacked(w, how: qarray.HowToQuantize, scale_dtype) -> qarray.QArray:
  """(L, in, out) -> QArray with qvalue (L, in, out) and scale (L, ., out): each layer as qwix would.
  One layer at a time (lax.map, not vmap): qwix's nf4 rounding compares every weight with the 16 levels,
  a 16x fp32 temporary, which for a whole 7B stack would not fit beside it."""
  q = jax.jit(lambda w: jax.lax.map(lambda x: qarray.quantize(x, how), w))(w)
  qvalue = lora._follow_sharding(q.qvalue, w, lambda s: s)
  scale = lora._follow_sharding(q.scale.astype(scale_dtype), w, lambda s: (s[0], None, s[2]))
  return dataclasses.replace(q, qvalue=qvalue, scale=scale)


def _rule(model, qtype: str | None, tile: int, lora_rule: bool = True):
  cfg = lora.lora_config(model)
  paths = [_adapted_path(p) for p, _ in lora.adapted_modules(model)]
  kw = dict(module_path="|".join(re.escape(p) for p in paths))
  if qtype is not None:
    qt = jnp.int8 if qtype == "int8" else qtype
    # qwix reads tile_size only to quantise a float kernel on the fly; every matched one is stored
    # quantised already (with _tile's block where `tile` does not divide its input size).
    kw.update(weight_qtype=qt, tile_size=tile if qtype == "nf4" else None)
  if lora_rule:
    return qwix.LoraRule(rank=cfg.rank, alpha=cfg.alpha, **kw)
  return qwix.QuantizationRule(**kw)


def _adapted_path(path) -> str:
  """A Janus module path as qwix sees it: relative to the language model."""
  return "/".join(map(str, path[1:]))


class _Provider(lora._Provider):
  """lora's provider, whose sum keeps the dequantised product's dtype also for a quantised base (qwix
  would promote it to the fp32 adapters' dtype and carry fp32 activations through unrolled layers)."""

  def dot_general(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                  out_sharding=None):
    out = super().dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                              out_sharding=out_sharding)
    if isinstance(rhs, ptq.WithAux):
      dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
      out = out if out.dtype == dtype else out.astype(dtype)
    return out


def quantize_base(model, qtype: str, *, tile: int = NF4_TILE):
  """A copy of the adapted Janus `model` (lora.apply_lora; left as it is) whose adapted projections'
  base kernels are stored quantised ("int8": per output channel; "nf4": per output channel and block
  of `tile` input rows), stacked per layer. "none" returns the model. Adapters, and every other
  parameter, are shared values, unchanged."""
  if qtype not in QTYPES:
    raise ValueError(f"base_qtype {qtype!r}: use one of {', '.join(QTYPES)}")
  if lora.lora_config(model) is None:
    raise ValueError("quantize_base needs a model with LoRA adapters (lora.apply_lora)")
  if qtype == "none":
    return model
  if base_qtype(model) is not None:
    raise ValueError(f"the base is already quantised ({base_qtype(model)})")
  out = nnx.clone(model)
  lm = out.language_model
  scale_dtype = lm.dtype
  for path, linear in lora.adapted_modules(out):
    w = linear.kernel[...]
    how = how_to_quantize(qtype, w.shape[1], tile)
    q = _quantize_stacked(w, how, scale_dtype or w.dtype)
    # nnx.Params inside qwix's WithAux(QArray): the structure PtqProvider's create_quantized_param leaves.
    boxed = dataclasses.replace(q, qvalue=nnx.Param(q.qvalue), scale=nnx.Param(q.scale))
    linear.kernel = ptq.WithAux(boxed, how)
  cfg = lora.lora_config(model)
  # adapters_off's class: the same base, dequantised, without the LoRA term.
  ptq_lm = qwix.quantize_model(nnx.clone(lm), qwix.PtqProvider([_rule(model, qtype, tile, lora_rule=False)]),
                               rngs=None, skip_nnx_init=True)
  provider = _Provider([_rule(model, qtype, tile)])
  lm = qwix.apply_lora_to_model(lm, provider, rngs=None, skip_nnx_init=True)
  type(lm)._unquantized_type = type(ptq_lm)
  lm.lora_config = cfg
  lm.base_qtype = qtype
  # One trace, as in apply_lora: qwix must reach every quantised projection.
  hidden = jax.ShapeDtypeStruct((1, 1, lm.cfg.hidden_size), lm.dtype or jnp.float32)
  jax.eval_shape(lambda x: lm(x)[0], hidden)
  if provider.get_unused_rules():
    raise RuntimeError("qwix intercepted none of the quantised projections")
  out.language_model = lm
  return out


def base_qtype(model) -> str | None:
  """"int8" / "nf4" for a Janus made by quantize_base, else None."""
  return getattr(model.language_model, "base_qtype", None)


def quantized_kernels(model) -> dict[str, qarray.QArray]:
  """Janus path -> the stacked QArray (raw arrays) of each quantised base kernel."""
  return {"/".join(map(str, p)): m.kernel.value.array for p, m in lora.adapted_modules(model)
          if isinstance(m.kernel, ptq.WithAux)}
