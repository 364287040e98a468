"""The LLaMA-style decoder of Janus-Pro (DeepSeek-LLM): RMSNorm, RoPE, SwiGLU, grouped-query attention.

Keys and values are kept heads-major, (B, KVH, S, D), the layout the attention dots read, so a KV
cache is never transposed. The decoder layers are stored as one DecoderLayer whose parameters carry a
leading layer axis (nothing restacks them per forward); KV caches and prefixes stay one (k, v) per
layer. - a full forward, or prefill / one-token decode against a preallocated cache;
- `return_kv=True` hands back each layer's keys and values: a prompt's prefix, to share;
- `prefixes=`: continuation rows that attend to shared prefixes' keys and values plus their own
  (causal); rows are laid out per prefix, then per prompt, then per sample, so G samples of one
  prompt read its prefix once and nothing of it is copied. Teacher-forced (the GRPO update) or one
  token at a time against a cache of the rows' own positions (the sampler).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pgen_jax.models import attention as attn
from pgen_jax.models.config import TextConfig
from pgen_jax.models.layers import RMSNorm, linear

KVCache = tuple[jax.Array, jax.Array]  # (B, KVH, S, D) each

# Decoder-layer rematerialisation policies: what the backward pass keeps instead of recomputing.
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(value) -> str:
  """A config's remat value (a REMAT key, or a bool as older configs have it) -> a REMAT key."""
  return {True: "full", False: "none"}.get(value, value) if isinstance(value, bool) else str(value)


@dataclasses.dataclass
class Prefix:
  """A shared prompt prefix: per layer (k, v) of shape (B, KVH, P, D), and its key mask (B, P)."""
  kv: list
  mask: jax.Array


def rope_tables(positions, head_dim: int, theta: float):
  """cos/sin of shape (B, T, head_dim) in fp32 for integer positions (B, T)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
  """x: (B, H, T, D); rotate-half convention (first and second halves pair up)."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos[:, None] + rotated * sin[:, None]).astype(x.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    self.num_heads, self.num_kv_heads, self.head_dim = (
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_per_head)
    kw = dict(bias=cfg.attention_bias, dtype=dtype, param_dtype=param_dtype)
    self.q_proj = linear(cfg.hidden_size, self.num_heads * self.head_dim, rngs, **kw)
    self.k_proj = linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, rngs, **kw)
    self.v_proj = linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, rngs, **kw)
    self.o_proj = linear(self.num_heads * self.head_dim, cfg.hidden_size, rngs, **kw)

  def __call__(self, x, cos, sin, ctx: "Context", cache: KVCache | None = None, prefix_kv=None):
    b, t, _ = x.shape
    heads = lambda y, n: y.reshape(b, t, n, self.head_dim).transpose(0, 2, 1, 3)
    q = apply_rope(heads(self.q_proj(x), self.num_heads), cos, sin)
    k = apply_rope(heads(self.k_proj(x), self.num_kv_heads), cos, sin)
    v = heads(self.v_proj(x), self.num_kv_heads)
    if cache is not None:
      ck, cv = cache
      start = (0, 0, ctx.cache_index, 0)
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
    kv = (k, v)
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    causal_q = ctx.cache_index + jnp.arange(t)
    if prefix_kv is None:
      out = attn.attend(q, k, v, key_mask=ctx.key_mask, causal_q=causal_q, impl=ctx.impl)
    else:
      out = self._with_prefixes(q, k, v, causal_q, prefix_kv, ctx)
    return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, t, -1)), kv

  def _with_prefixes(self, q, k, v, causal_q, prefix_kv, ctx):
    """Rows grouped as (prefix, prompt, sample): each group's queries see that prompt's prefix (read
    once for its samples) and their own keys, merged by log-sum-exp."""
    r, h, t, d = q.shape
    own = attn.attend(q, k, v, key_mask=ctx.key_mask, causal_q=causal_q, impl=ctx.impl, return_lse=True)
    outs, lses, per_group = [], [], r // len(prefix_kv)
    for g, ((pk, pv), pmask) in enumerate(zip(prefix_kv, ctx.prefix_masks)):
      nb = pk.shape[0]
      n = per_group // nb
      qg = q[g * per_group:(g + 1) * per_group].reshape(nb, n, h, t, d)
      qg = qg.transpose(0, 2, 1, 3, 4).reshape(nb, h, n * t, d)
      o, lse = attn.attend(qg, pk.astype(q.dtype), pv.astype(q.dtype), key_mask=pmask, causal_q=None,
                           impl=ctx.impl, return_lse=True)
      outs.append(o.reshape(nb, h, n, t, d).transpose(0, 2, 1, 3, 4).reshape(per_group, h, t, d))
      lses.append(lse.reshape(nb, h, n, t).transpose(0, 2, 1, 3).reshape(per_group, h, t))
    shared = (jnp.concatenate(outs), jnp.concatenate(lses))
    return attn.merge([shared, own])[0]


@dataclasses.dataclass(frozen=True)
class Context:
  """What every layer of one forward needs besides its input: key masks, cache index, kernel."""
  key_mask: jax.Array | None
  cache_index: jax.Array | int
  impl: str
  prefix_masks: tuple = ()


jax.tree_util.register_dataclass(Context, data_fields=["key_mask", "cache_index", "prefix_masks"],
                                 meta_fields=["impl"])


class MLP(nnx.Module):
  def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    kw = dict(bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype)
    self.gate_proj = linear(cfg.hidden_size, cfg.intermediate_size, rngs, **kw)
    self.up_proj = linear(cfg.hidden_size, cfg.intermediate_size, rngs, **kw)
    self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size, rngs, **kw)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
    self.self_attn = Attention(cfg, rngs, dtype=dtype, param_dtype=param_dtype)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
    self.mlp = MLP(cfg, rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x, cos, sin, ctx: Context, cache=None, prefix_kv=None):
    h, kv = self.self_attn(self.input_layernorm(x), cos, sin, ctx, cache, prefix_kv)
    x = x + h
    return x + self.mlp(self.post_attention_layernorm(x)), kv


def stacked_layers(cfg: TextConfig, rngs: nnx.Rngs, **kw) -> DecoderLayer:
  """cfg.num_hidden_layers DecoderLayers as one whose every parameter has a leading layer axis.

  Initialised layer by layer and stacked once here (the values of separate inits, in order); loading a
  checkpoint builds it under nnx.eval_shape, so nothing is allocated twice."""
  layers = [DecoderLayer(cfg, rngs, **kw) for _ in range(cfg.num_hidden_layers)]
  stacked = jax.tree.map(lambda *ws: jnp.stack(ws), *[nnx.state(layer) for layer in layers])
  return nnx.merge(nnx.graphdef(layers[0]), stacked)


def _key(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def layer_major_leaves(tree) -> list:
  """The leaves of a parameter-shaped tree (parameters, gradients) in the order a tree of separately
  stored layers would flatten to: the decoder's stacked leaves (language_model/layers/<name>...) are
  cut into their layers, layer 0's leaves first, then layer 1's, ... Sums over this list (a global
  norm) add the same numbers in the same order as they did before the layers were stored stacked."""
  out, group = [], []
  def flush():
    out.extend(leaf[i] for i in range(group[0].shape[0] if group else 0) for leaf in group)
    group.clear()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [_key(k) for k in path]
    at = next((j for j in range(len(keys) - 2) if keys[j:j + 2] == ["language_model", "layers"]), None)
    if at is not None and not keys[at + 2].isdigit():
      group.append(leaf)
    else:
      flush()
      out.append(leaf)
  flush()
  return out


class LlamaModel(nnx.Module):
  """remat: the backward's policy for the layers of a forward without a cache (a REMAT key, or a bool);
  attention_impl: the attention kernel (pgen_jax.models.attention.IMPLS). Both are static, part of the
  graphdef: a stage builds or loads the model with its own (a benchmark may still set them on a built one)."""

  def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32, remat="none",
               attention_impl: str = "auto"):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat_policy(remat)
    if self.remat not in REMAT:
      raise ValueError(f"remat {remat!r}: use one of {', '.join(REMAT)} (or a bool)")
    if attention_impl not in attn.IMPLS:
      raise ValueError(f"attention implementation {attention_impl!r}: use one of {', '.join(attn.IMPLS)}")
    self.attention_impl = attention_impl
    self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                  embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = stacked_layers(cfg, rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> list[KVCache]:
    dtype = dtype or self.dtype or jnp.float32
    return [(jnp.zeros(self.cache_shape(batch, max_len), dtype),) * 2 for _ in range(self.cfg.num_hidden_layers)]

  def cache_shape(self, batch: int, length: int) -> tuple[int, ...]:
    """Of one layer's keys (and of its values): caches stay one per layer."""
    return (batch, self.cfg.num_key_value_heads, length, self.cfg.dim_per_head)

  def _layers(self, x, positions, ctx: Context, cache=None, prefix: list | None = None, return_kv=True,
              remat=True):
    """The layers over their stored stacked weights; nothing restacks them.

    With remat and no cache, one lax.scan over the stacked weights, each step under jax.checkpoint:
    inside a scan the backward keeps only each layer's input (and what the policy saves), which XLA
    honours on every backend (an unrolled loop of checkpointed layers is not rematerialised by XLA's
    CPU pipeline); each step casts its layer's matrices to the compute dtype (linear layers would
    anyway), so the fp32 parameters are never copied as a whole; norms keep their dtype. Otherwise
    (no remat, or a cache) the layers run unrolled, layer i reading slice i of every stacked weight
    (lax.split: its transpose concatenates the layers' gradients) and its own cache and prefix, one
    (k, v) per layer: the computation of separately stored layers, value for value.
    """
    cos, sin = rope_tables(positions, self.cfg.dim_per_head, self.cfg.rope_theta)
    x = x if self.dtype is None else x.astype(self.dtype)
    graphdef, weights = nnx.split(self.layers)
    n = self.cfg.num_hidden_layers
    policy = remat_policy(self.remat) if remat else "none"
    if policy != "none" and cache is None:
      x, kvs = self._scanned(x, cos, sin, ctx, graphdef, weights, prefix, REMAT[policy], return_kv)
      return self.norm(x), kvs
    leaves, treedef = jax.tree.flatten(weights)
    split = [[p.reshape(w.shape[1:]) for p in jax.lax.split(w, (1,) * n)] for w in leaves]
    kvs = []
    for i in range(n):
      w = jax.tree.unflatten(treedef, [parts[i] for parts in split])
      layer_prefix = None if prefix is None else [p.kv[i] for p in prefix]
      layer_cache = None if cache is None else cache[i]
      x, kv = nnx.merge(graphdef, w)(x, cos, sin, ctx, layer_cache, layer_prefix)
      kvs.append(kv)
    return self.norm(x), kvs

  def _scanned(self, x, cos, sin, ctx, graphdef, weights, prefix, policy, return_kv):
    # Float matrices only: a quantised base's integer values (models/quant.py) stay as stored.
    cast = lambda w: (w.astype(self.dtype) if self.dtype is not None and w.ndim >= 2
                      and jnp.issubdtype(w.dtype, jnp.floating) else w)
    n = self.cfg.num_hidden_layers
    stacked_prefix = None if prefix is None else [  # activations, stacked for the scan as before
        tuple(jnp.stack([p.kv[i][j] for i in range(n)]) for j in range(2)) for p in prefix]

    def body(h, xs):
      w, layer_prefix = xs
      h, kv = nnx.merge(graphdef, jax.tree.map(cast, w))(h, cos, sin, ctx, None, layer_prefix)
      return h, (kv if return_kv else None)

    x, kvs = jax.lax.scan(jax.checkpoint(body, policy=policy), x, (weights, stacked_prefix))
    return x, ([(kvs[0][i], kvs[1][i]) for i in range(n)] if return_kv else [])

  def __call__(self, inputs_embeds, positions=None, attention_mask=None,
               cache: list[KVCache] | None = None, cache_index=0, *, return_kv: bool = False,
               prefixes: list[Prefix] | None = None, remat: bool = True):
    """inputs_embeds (B, T, D) -> last hidden state (B, T, D), and the updated cache (or, with
    return_kv, each layer's keys and values) or None.

    positions: (B, T) RoPE positions, default arange. attention_mask: (B, S) booleans over keys
    (S = T, or the cache length when a cache is given); False marks padding.

    prefixes: the rows continue shared prefixes. They are laid out [prefix 0: prompt 0 samples
    0..n-1, prompt 1 ...; prefix 1: ...] (B = len(prefixes) * prompts * n) and attend to their
    prompt's prefix plus their own positions: causally among the T given (teacher forcing), or,
    with a cache of their own positions, to those <= cache_index.

    remat=False: the layers run without the model's remat policy, for a forward nothing differentiates
    (the sampler's prefill), where the scan's stacked outputs would only add memory.
    """
    b, t, _ = inputs_embeds.shape
    if positions is None:
      positions = jnp.broadcast_to(cache_index + jnp.arange(t), (b, t))
    masks = () if prefixes is None else tuple(p.mask.astype(bool) for p in prefixes)
    ctx = Context(None if attention_mask is None else attention_mask.astype(bool), cache_index,
                  self.attention_impl, masks)
    hidden, kvs = self._layers(inputs_embeds, positions, ctx, cache, prefixes,
                               return_kv=cache is not None or return_kv, remat=remat)
    return hidden, (kvs if cache is not None or return_kv else None)
