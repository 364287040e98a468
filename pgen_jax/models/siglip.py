"""SigLIP-L/16 understanding encoder of Janus (no class token; the attention-pool head is unused)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from pgen_jax.models.config import VisionConfig
from pgen_jax.models.layers import MLP, LayerNorm, attention, linear


class Embeddings(nnx.Module):
  def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    p = cfg.patch_size
    self.patch_embedding = nnx.Conv(cfg.num_channels, cfg.hidden_size, (p, p), strides=(p, p),
                                    padding="VALID", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.position_embedding = nnx.Embed(cfg.num_image_tokens, cfg.hidden_size, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pixel_values):
    x = self.patch_embedding(pixel_values)  # (B, h, w, D), raster order as torch's flatten(2)
    b, h, w, d = x.shape
    if h * w != self.position_embedding.num_embeddings:
      raise ValueError(f"image gives {h}x{w} patches but the encoder was built for "
                       f"{self.position_embedding.num_embeddings}; resize images to the model's image_size")
    return x.reshape(b, h * w, d) + self.position_embedding.embedding[...].astype(x.dtype)[None]


class SelfAttention(nnx.Module):
  def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    d = cfg.hidden_size
    self.num_heads = cfg.num_attention_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.q_proj = linear(d, d, rngs, bias=cfg.attention_bias, **kw)
    self.k_proj = linear(d, d, rngs, bias=cfg.attention_bias, **kw)
    self.v_proj = linear(d, d, rngs, bias=cfg.attention_bias, **kw)
    self.projection_layer = linear(d, d, rngs, **kw)

  def __call__(self, x):
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
    out = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
    return self.projection_layer(out.reshape(b, t, d))


class EncoderLayer(nnx.Module):
  def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype)
    self.self_attn = SelfAttention(cfg, rngs, **kw)
    self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype)
    self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, rngs, **kw)

  def __call__(self, x):
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):
  def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    self.layers = nnx.List([EncoderLayer(cfg, rngs, dtype=dtype, param_dtype=param_dtype)
                            for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class VisionModel(nnx.Module):
  """pixel_values (B, H, W, C), normalised with mean/std 0.5 -> (B, num_patches, hidden)."""

  def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.dtype = dtype
    self.embeddings = Embeddings(cfg, rngs, **kw)
    self.encoder = Encoder(cfg, rngs, **kw)
    self.post_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype)

  def __call__(self, pixel_values):
    if self.dtype is not None:
      pixel_values = pixel_values.astype(self.dtype)
    return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))
