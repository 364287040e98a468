"""The LLaMA-style decoder of Janus-Pro (DeepSeek-LLM): RMSNorm, RoPE, SwiGLU, grouped-query attention.

An optional KV cache (a tuple (k, v) per layer of shape (B, S, KVH, D)) is written at `cache_index`,
so the same module serves full forwards, prefill and one-token decode steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgen_jax.models.config import TextConfig
from pgen_jax.models.layers import RMSNorm, attention, linear

KVCache = tuple[jax.Array, jax.Array]


def rope_tables(positions, head_dim: int, theta: float):
  """cos/sin of shape (B, T, head_dim) in fp32 for integer positions (B, T)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
  """x: (B, T, H, D); rotate-half convention (first and second halves pair up)."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    self.num_heads, self.num_kv_heads, self.head_dim = (
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_per_head)
    kw = dict(bias=cfg.attention_bias, dtype=dtype, param_dtype=param_dtype)
    self.q_proj = linear(cfg.hidden_size, self.num_heads * self.head_dim, rngs, **kw)
    self.k_proj = linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, rngs, **kw)
    self.v_proj = linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, rngs, **kw)
    self.o_proj = linear(self.num_heads * self.head_dim, cfg.hidden_size, rngs, **kw)

  def __call__(self, x, cos, sin, mask, cache: KVCache | None = None, cache_index=0):
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
      ck, cv = cache
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
      cache = (k, v)
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    return self.o_proj(out.reshape(b, t, -1)), cache


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

  def __call__(self, x, cos, sin, mask, cache=None, cache_index=0):
    h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
    x = x + h
    return x + self.mlp(self.post_attention_layernorm(x)), cache


class LlamaModel(nnx.Module):
  def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = False  # recompute each layer's activations in the backward pass (saves memory)
    self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                  embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs, dtype=dtype, param_dtype=param_dtype)
                            for _ in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> list[KVCache]:
    shape = (batch, max_len, self.cfg.num_key_value_heads, self.cfg.dim_per_head)
    dtype = dtype or self.dtype or jnp.float32
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.layers]

  def __call__(self, inputs_embeds, positions=None, attention_mask=None,
               cache: list[KVCache] | None = None, cache_index=0):
    """inputs_embeds (B, T, D) -> last hidden state (B, T, D), updated cache.

    positions: (B, T) RoPE positions, default arange. attention_mask: (B, S) booleans over keys
    (S = T, or the cache length when a cache is given); False marks padding.
    """
    b, t, _ = inputs_embeds.shape
    if positions is None:
      positions = jnp.broadcast_to(cache_index + jnp.arange(t), (b, t))
    s = t if cache is None else cache[0][0].shape[1]
    q_idx = cache_index + jnp.arange(t)
    mask = (jnp.arange(s)[None, :] <= q_idx[:, None])[None, None]  # (1, 1, T, S) causal
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    cos, sin = rope_tables(positions, self.cfg.dim_per_head, self.cfg.rope_theta)
    x = inputs_embeds if self.dtype is None else inputs_embeds.astype(self.dtype)
    new_cache = []
    call = nnx.remat(DecoderLayer.__call__) if self.remat else DecoderLayer.__call__
    for i, layer in enumerate(self.layers):
      x, c = call(layer, x, cos, sin, mask, None if cache is None else cache[i], cache_index)
      new_cache.append(c)
    return self.norm(x), (new_cache if cache is not None else None)
