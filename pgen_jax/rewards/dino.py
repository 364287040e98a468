"""DINO image encoders in Flax NNX: DINOv2 (layer scale; pooler = layer-normed CLS) and DINOv1 ViT
(transformers' ViTModel layout; feature = layer-normed CLS).

Parameter paths mirror the keys transformers writes to disk (encoder.layer.i.attention.attention.query,
...), which are the checkpoint's own keys: transformers v5 renames them in memory only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from pgen_jax.models.layers import ACTIVATIONS, MLP, LayerNorm, attention, linear


@dataclasses.dataclass(frozen=True)
class DinoConfig:
  kind: str = "dinov2"            # dinov2 | vit (DINOv1)
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 4096   # vit; dinov2 uses mlp_ratio
  mlp_ratio: float = 4.0
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-6
  image_size: int = 224           # the size the position embeddings are built for
  patch_size: int = 14
  num_channels: int = 3

  @property
  def mlp_dim(self) -> int:
    return int(self.hidden_size * self.mlp_ratio) if self.kind == "dinov2" else self.intermediate_size

  @classmethod
  def from_hf(cls, d: dict[str, Any]) -> "DinoConfig":
    kind = {"dinov2": "dinov2", "vit": "vit"}.get(d.get("model_type"))
    if kind is None:
      raise ValueError(f"model_type {d.get('model_type')!r}: expected 'dinov2' or 'vit'")
    if d.get("use_swiglu_ffn"):
      raise ValueError("use_swiglu_ffn: the SwiGLU MLP of DINOv2-giant is not supported")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(kind=kind, **{k: v for k, v in d.items() if k in names and k != "kind" and v is not None})


class SelfAttention(nnx.Module):
  def __init__(self, cfg: DinoConfig, rngs, **kw):
    d = cfg.hidden_size
    self.heads = cfg.num_attention_heads
    self.query, self.key, self.value = (linear(d, d, rngs, **kw) for _ in range(3))

  def __call__(self, x):
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads)
    return attention(split(self.query(x)), split(self.key(x)), split(self.value(x))).reshape(b, t, d)


class Dense(nnx.Module):
  def __init__(self, din, dout, rngs, **kw):
    self.dense = linear(din, dout, rngs, **kw)

  def __call__(self, x):
    return self.dense(x)


class Attention(nnx.Module):
  def __init__(self, cfg: DinoConfig, rngs, **kw):
    self.attention = SelfAttention(cfg, rngs, **kw)
    self.output = Dense(cfg.hidden_size, cfg.hidden_size, rngs, **kw)

  def __call__(self, x):
    return self.output(self.attention(x))


class LayerScale(nnx.Module):
  def __init__(self, dim: int, param_dtype):
    self.lambda1 = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x):
    return x * self.lambda1[...].astype(x.dtype)


class Dinov2Layer(nnx.Module):
  def __init__(self, cfg: DinoConfig, rngs, **kw):
    pd = kw.get("param_dtype", jnp.float32)
    self.norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)
    self.attention = Attention(cfg, rngs, **kw)
    self.layer_scale1 = LayerScale(cfg.hidden_size, pd)
    self.norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)
    self.mlp = MLP(cfg.hidden_size, cfg.mlp_dim, cfg.hidden_act, rngs, **kw)
    self.layer_scale2 = LayerScale(cfg.hidden_size, pd)

  def __call__(self, x):
    x = x + self.layer_scale1(self.attention(self.norm1(x)))
    return x + self.layer_scale2(self.mlp(self.norm2(x)))


class ViTLayer(nnx.Module):
  def __init__(self, cfg: DinoConfig, rngs, **kw):
    pd = kw.get("param_dtype", jnp.float32)
    self.act = cfg.hidden_act
    self.layernorm_before = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)
    self.attention = Attention(cfg, rngs, **kw)
    self.layernorm_after = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)
    self.intermediate = Dense(cfg.hidden_size, cfg.mlp_dim, rngs, **kw)
    self.output = Dense(cfg.mlp_dim, cfg.hidden_size, rngs, **kw)

  def __call__(self, x):
    x = x + self.attention(self.layernorm_before(x))
    return x + self.output(ACTIVATIONS[self.act](self.intermediate(self.layernorm_after(x))))


class PatchEmbeddings(nnx.Module):
  def __init__(self, cfg: DinoConfig, rngs, *, dtype=None, param_dtype=jnp.float32):
    p = cfg.patch_size
    self.projection = nnx.Conv(cfg.num_channels, cfg.hidden_size, (p, p), strides=(p, p), padding="VALID",
                               dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    x = self.projection(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class Embeddings(nnx.Module):
  def __init__(self, cfg: DinoConfig, rngs, **kw):
    pd = kw.get("param_dtype", jnp.float32)
    d, n = cfg.hidden_size, (cfg.image_size // cfg.patch_size) ** 2
    self.cls_token = nnx.Param(jnp.zeros((1, 1, d), pd))
    if cfg.kind == "dinov2":
      self.mask_token = nnx.Param(jnp.zeros((1, d), pd))  # unused for features; kept to match checkpoints
    self.position_embeddings = nnx.Param(jnp.zeros((1, n + 1, d), pd))
    self.patch_embeddings = PatchEmbeddings(cfg, rngs, **kw)

  def __call__(self, pixels):
    x = self.patch_embeddings(pixels)
    pos = self.position_embeddings[...]
    if x.shape[1] + 1 != pos.shape[1]:
      raise ValueError(f"DINO was built for {pos.shape[1] - 1} patches, got {x.shape[1]}: convert it for this "
                       "input size (rewards/hf.py load_dino, image_size=...)")
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    return jnp.concatenate([cls, x], 1) + pos.astype(x.dtype)


class Encoder(nnx.Module):
  def __init__(self, cfg: DinoConfig, rngs, **kw):
    layer = Dinov2Layer if cfg.kind == "dinov2" else ViTLayer
    self.layer = nnx.List([layer(cfg, rngs, **kw) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x):
    for layer in self.layer:
      x = layer(x)
    return x


class Dino(nnx.Module):
  """pixels (B, S, S, 3), normalised with ImageNet mean/std -> layer-normed CLS features (B, D), fp32."""

  def __init__(self, config: DinoConfig, rngs: nnx.Rngs | None = None, *, dtype=None, param_dtype=jnp.float32):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.config = config
    self.embeddings = Embeddings(config, rngs, **kw)
    self.encoder = Encoder(config, rngs, **kw)
    self.layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps, param_dtype=param_dtype)

  def __call__(self, pixels):
    return self.layernorm(self.encoder(self.embeddings(pixels)))[:, 0].astype(jnp.float32)


# Architectures for random-weight runs ("random:<name>" in reward_models.dino).
PRESETS = {"dinov2-large": DinoConfig(), "dinov2-base": DinoConfig(hidden_size=768, num_attention_heads=12),
           "tiny": DinoConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=28)}
