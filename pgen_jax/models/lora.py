"""LoRA adapters on Janus's language model, through qwix.

`apply_lora(model, LoraConfig(...))` returns a Janus whose decoder projections compute
x W + (alpha / rank) (x A) B, where W is the frozen base kernel (in, out), A (in, rank) and B (rank,
out) are the adapters (nnx.LoRAParam, B zero-initialised, so the adapted model starts equal to the
base); `merge` folds them back into a plain Janus, `ADAPTERS` selects them (an nnx filter, for the
optimizer), `adapters_off` runs the same model without them (a reference model with no second copy).

How qwix is used, and why not as `qwix.apply_lora_to_model` alone. qwix replaces the class of the
module it is given by a subclass whose `__call__` runs inside an interception of jax.lax.dot_general
(and einsum, conv): each matmul whose current nnx module (the nearest `self` up the Python stack) has a
`qwix_path` fully matching the rule's regex, and whose right operand is a parameter of that module
(`kernel`), gets the LoRA term added; the adapters are found as `<param>_lora_a` / `<param>_lora_b`
attributes of that module, or created there on qwix's first (eager) call. With our decoder that
creation cannot work: the layers' weights are stored stacked (leading layer axis) in one DecoderLayer,
and every forward runs nnx.merge(graphdef, slice_i) per layer (or per lax.scan step under remat), so
the module qwix sees is a throwaway per-layer copy; adapters it created there would be lost (and, in
the scan, be tracers). Also, the nnx.Rngs qwix attaches to every module for that creation lands in
the state that `_layers` slices along the layer axis, which fails (RngCount is a scalar). So:

- qwix intercepts `LlamaModel.__call__` (the language model, not Janus: the image-generation paths,
  GRPO's log-probs and the sampler call `model.language_model(...)` directly, never Janus.__call__),
  with `rngs=None` and `skip_nnx_init=True`;
- we create the adapters ourselves, stacked like their kernels, on the stored stacked layer's
  nnx.Linear modules: A (L, in, rank) and B (L, rank, out), initialised by the qwix rule's own
  initializers (he_uniform per layer, zeros), in fp32 (the trained master copy, whatever the base's
  storage dtype) and following the kernel's sharding, as
  qwix would;
- at run time the per-layer slicing hands each layer's Linear its A (in, rank), B (rank, out), and
  qwix's LoraProvider.dot_general finds them there (`getattr(module, "kernel_lora_a")`) and adds
  (alpha / rank) (x A) B; nothing in llama.py knows about LoRA. Both layer paths (unrolled lax.split
  slices, and the remat lax.scan) work, since both slice every stacked leaf.

The target regex is matched against Janus module paths ('/'-joined, as nnx.iter_modules gives them,
e.g. language_model/layers/self_attn/q_proj); it may select only nnx.Linear modules of the decoder
layers. qwix itself sees paths relative to the language model, so its rule is the exact list of the
selected paths, and a trace after setup checks (provider.get_unused_rules) that qwix really reached them.

One addition to qwix's provider: when the base product is in a compute dtype (bf16) below the
adapters' storage dtype (fp32), qwix's sum would come out in fp32 and carry fp32 activations through
the unrolled layers; the result is cast back to the base product's dtype. (The scanned path already
casts every stacked weight, adapters included, to the compute dtype.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import jax
import jax.numpy as jnp
import qwix
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.errors import ConfigError
from pgen_jax.models.llama import LlamaModel

# The decoder's attention and MLP projections (llama.py: Attention.q/k/v/o_proj, MLP.gate/up/down_proj).
DEFAULT_TARGET = r"language_model/layers/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)"
ADAPTERS = nnx.LoRAParam                              # the adapter parameters (an nnx filter)
BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))     # every other parameter
_LAYERS = "language_model/layers/"                    # where adapters can go: the stacked decoder layers


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r, alpha (the update is scaled by alpha / r, as in PEFT), target: a regex fully matching the
  '/'-joined Janus module paths to adapt (nnx.Linear modules of language_model/layers only)."""
  rank: int = 16
  alpha: float = 32.0
  target: str = DEFAULT_TARGET

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def validate(self) -> "LoraConfig":
    if not (isinstance(self.rank, int) and self.rank > 0):
      raise ConfigError(f"model.lora.rank={self.rank!r}: use a positive integer")
    if not self.alpha > 0:
      raise ConfigError(f"model.lora.alpha={self.alpha!r}: use a positive number")
    try:
      re.compile(self.target)
    except re.error as e:
      raise ConfigError(f"model.lora.target={self.target!r} is not a regex: {e}") from None
    return self


class _Provider(qwix.LoraProvider):
  """qwix's LoraProvider, whose LoRA sum keeps the base product's dtype (module docstring)."""

  def dot_general(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                  out_sharding=None):
    out = super().dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                              out_sharding=out_sharding)
    if isinstance(rhs, jax.Array):  # not a qwix-quantised base, whose product dtype qwix decides
      dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
      out = out if out.dtype == dtype else out.astype(dtype)
    return out


def _path(path) -> str:
  return "/".join(map(str, path))


def target_paths(model, cfg: LoraConfig) -> list[str]:
  """The Janus module paths `cfg.target` selects; a ConfigError if none, or if one cannot be adapted."""
  cfg.validate()
  linear = [_path(p) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)]
  paths = [p for p in linear if re.fullmatch(cfg.target, p)]
  adaptable = [p for p in linear if p.startswith(_LAYERS)]
  if not paths:
    raise ConfigError(f"model.lora.target={cfg.target!r} matches no linear module; those that can be adapted: "
                      f"{', '.join(adaptable)}")
  outside = [p for p in paths if not p.startswith(_LAYERS)]
  if outside:
    raise ConfigError(f"model.lora.target={cfg.target!r} matches {', '.join(outside)}: adapters go on the "
                      f"decoder layers' linear modules only ({', '.join(adaptable)}); train other parts "
                      "through sft.trainable")
  return paths


def _follow_sharding(value, kernel, spec_of):
  """value placed like `kernel` (a NamedSharding's axes through spec_of), or as it is."""
  sharding = getattr(kernel, "sharding", None) if not isinstance(kernel, jax.core.Tracer) else None
  if not isinstance(sharding, NamedSharding):
    return value
  spec = tuple(sharding.spec) + (None,) * (kernel.ndim - len(sharding.spec))
  return jax.device_put(value, NamedSharding(sharding.mesh, P(*spec_of(spec))))


def apply_lora(model, cfg: LoraConfig, *, rngs: nnx.Rngs | int = 0):
  """A copy of the Janus `model` (which is left as it is; the copy shares its base weights) with LoRA
  adapters on the modules `cfg.target` selects. A (layers, in, rank) from the rule's initializer with
  `rngs`' params stream, B (layers, rank, out) zeros: the adapted model equals the base."""
  if lora_config(model) is not None:
    raise ValueError("the model already carries LoRA adapters: merge them (lora.merge) before adding others")
  paths = target_paths(model, cfg)
  rngs = rngs if isinstance(rngs, nnx.Rngs) else nnx.Rngs(rngs)
  lm_paths = [p.removeprefix("language_model/") for p in paths]
  rule = qwix.LoraRule(module_path="|".join(re.escape(p) for p in lm_paths), rank=cfg.rank, alpha=cfg.alpha)
  provider = _Provider([rule])
  out = nnx.clone(model)
  # rngs=None: qwix would otherwise attach an nnx.Rngs to every module (state our layer slicing cannot
  # split); skip_nnx_init: its first call would create per-layer adapters on throwaway modules.
  lm = qwix.apply_lora_to_model(out.language_model, provider, rngs=None, skip_nnx_init=True)
  modules = {_path(p): m for p, m in nnx.iter_modules(lm)}
  for p in lm_paths:
    linear = modules[p]
    kernel = linear.kernel[...]
    layers, din, dout = kernel.shape
    keys = jax.random.split(rngs.params(), layers)
    # fp32 whatever the base's storage: a frozen bf16 base (model.param_dtype) halves its bytes, while the
    # adapters' small updates need fp32 to register (they are cast to the compute dtype in the matmul)
    a = jax.vmap(lambda k: rule.lora_a_initializer(k, (din, cfg.rank), jnp.float32))(keys)
    b = jax.vmap(lambda k: rule.lora_b_initializer(k, (cfg.rank, dout), jnp.float32))(keys)
    # qwix's naming (<param>_lora_a/_b) is how its dot_general finds them in each layer's module.
    linear.kernel_lora_a = nnx.LoRAParam(_follow_sharding(a, kernel, lambda s: (s[0], s[1], None)))
    linear.kernel_lora_b = nnx.LoRAParam(_follow_sharding(b, kernel, lambda s: (s[0], None, s[2])))
  lm.lora_config = cfg
  # One trace (no compute) of the intercepted forward: qwix must have reached every selected module.
  hidden = jax.ShapeDtypeStruct((1, 1, lm.cfg.hidden_size), lm.dtype or jnp.float32)
  jax.eval_shape(lambda x: lm(x)[0], hidden)
  if provider.get_unused_rules():
    raise RuntimeError(f"qwix intercepted no matmul of {', '.join(paths)}: the adapters would be unused")
  out.language_model = lm
  return out


def lora_config(model) -> LoraConfig | None:
  """The LoraConfig of a Janus made by apply_lora, else None."""
  return getattr(model.language_model, "lora_config", None)


def _adapted(lm) -> list[nnx.Linear]:
  return [m for _, m in nnx.iter_modules(lm) if isinstance(getattr(m, "kernel_lora_a", None), nnx.LoRAParam)]


def adapted_modules(model) -> list[tuple[tuple, nnx.Linear]]:
  """(Janus path, linear module) of every adapted projection: kernel_lora_a (layers, in, rank) and
  kernel_lora_b (layers, rank, out) stacked like its kernel."""
  return [(("language_model",) + tuple(p), m) for p, m in nnx.iter_modules(model.language_model)
          if isinstance(getattr(m, "kernel_lora_a", None), nnx.LoRAParam)]


def merge(model):
  """A plain Janus whose adapted kernels are W + (alpha / rank) A @ B, layer by layer, summed in fp32
  and stored in W's dtype: the base model's very structure (graphdef), no adapters, no interception,
  so it saves and exports as any Janus does. `model` is left as it is."""
  cfg = lora_config(model)
  if cfg is None:
    raise ValueError("the model carries no LoRA adapters (lora.apply_lora)")
  lm = nnx.clone(model.language_model)
  for linear in _adapted(lm):
    w = linear.kernel[...]
    delta = jnp.einsum("lir,lro->lio", linear.kernel_lora_a[...].astype(jnp.float32),
                       linear.kernel_lora_b[...].astype(jnp.float32))
    linear.kernel[...] = (w.astype(jnp.float32) + cfg.scale * delta).astype(w.dtype)
  # The base parameters into a freshly built (abstract) LlamaModel's graphdef: unpicking qwix's class
  # swap and attributes in place would leave traces in nnx's record of the module's attributes.
  plain = nnx.graphdef(nnx.eval_shape(lambda: LlamaModel(
      lm.cfg, nnx.Rngs(0), dtype=lm.dtype, param_dtype=lm.embed_tokens.param_dtype, remat=lm.remat,
      attention_impl=lm.attention_impl)))
  merged = nnx.clone(model)
  merged.language_model = nnx.merge(plain, nnx.state(lm, BASE))
  return merged


@contextlib.contextmanager
def adapters_off(model):
  """Within the block, `model` (a Janus made by apply_lora, or any Janus) computes as its base model:
  the language model runs without qwix's interception, so the adapters are read by nothing. For
  GRPO's reference log-probs from the very same weights."""
  lm = model.language_model
  cls = type(lm)
  base = getattr(cls, "_unquantized_type", None)
  if base is None:
    yield model
    return
  # object.__setattr__: no nnx bookkeeping (nor its trace-level check, for a model closed over by jit).
  object.__setattr__(lm, "__class__", base)
  try:
    yield model
  finally:
    object.__setattr__(lm, "__class__", cls)


def trainable_filter(parts):
  """What trains with adapters (an nnx filter): the adapters, and the parameters of the parts listed in
  `parts` (sft.trainable) that carry none (adapters go on the language model only, whose base stays
  frozen). Paths as pgen_jax.train.update.trainable_filter reads them (not imported: models stay below
  train)."""
  plain = tuple(p for p in parts if p != "language_model")
  return nnx.Any(ADAPTERS, nnx.All(BASE, lambda path, _: bool(path) and str(path[0]) in plain))
