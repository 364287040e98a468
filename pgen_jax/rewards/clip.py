"""CLIP image and text towers in Flax NNX, frozen reward/metric models.

Parameter paths mirror transformers' CLIPModel (vision_model.*, text_model.*, visual_projection,
text_projection, logit_scale), so models/hf_params.py maps HF checkpoints; open_clip checkpoints
are renamed to these keys by rewards/hf.py. The features are not normalised; the similarity scores
(100 x cosine, as in the metric literature) are pgen_jax.rewards.similarity's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from pgen_jax.models.layers import MLP, LayerNorm, attention, linear


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  # vision
  image_size: int = 224
  patch_size: int = 14
  num_channels: int = 3
  # text
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  eos_token_id: int = 2  # 2: the legacy configs, where pooling takes the highest id (EOT)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  vision: TowerConfig
  text: TowerConfig
  projection_dim: int = 512

  @classmethod
  def from_hf(cls, d: dict[str, Any]) -> "CLIPConfig":
    names = {f.name for f in dataclasses.fields(TowerConfig)}
    def tower(x):
      return TowerConfig(**{k: v for k, v in (x or {}).items() if k in names and v is not None})
    return cls(vision=tower(d.get("vision_config")), text=tower(d.get("text_config")),
               projection_dim=d.get("projection_dim", 512))

  def to_hf(self) -> dict[str, Any]:
    v, t = dataclasses.asdict(self.vision), dataclasses.asdict(self.text)
    return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": self.projection_dim,
            "vision_config": {k: v[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_attention_heads", "hidden_act", "layer_norm_eps",
                                                 "image_size", "patch_size", "num_channels")},
            "text_config": {k: t[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "hidden_act", "layer_norm_eps", "vocab_size",
                                               "max_position_embeddings", "eos_token_id")}}


class SelfAttention(nnx.Module):
  def __init__(self, cfg: TowerConfig, rngs, **kw):
    d = cfg.hidden_size
    self.heads = cfg.num_attention_heads
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = (linear(d, d, rngs, **kw) for _ in range(4))

  def __call__(self, x, mask=None):
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads)
    out = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), mask)
    return self.out_proj(out.reshape(b, t, d))


class EncoderLayer(nnx.Module):
  def __init__(self, cfg: TowerConfig, rngs, **kw):
    pd = kw.get("param_dtype", jnp.float32)
    self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)
    self.self_attn = SelfAttention(cfg, rngs, **kw)
    self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)
    self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, rngs, **kw)

  def __call__(self, x, mask=None):
    x = x + self.self_attn(self.layer_norm1(x), mask)
    return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):
  def __init__(self, cfg: TowerConfig, rngs, **kw):
    self.layers = nnx.List([EncoderLayer(cfg, rngs, **kw) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x, mask=None):
    for layer in self.layers:
      x = layer(x, mask)
    return x


class VisionEmbeddings(nnx.Module):
  def __init__(self, cfg: TowerConfig, rngs, *, dtype=None, param_dtype=jnp.float32):
    p = cfg.patch_size
    self.class_embedding = nnx.Param(jnp.zeros((cfg.hidden_size,), param_dtype))
    self.patch_embedding = nnx.Conv(cfg.num_channels, cfg.hidden_size, (p, p), strides=(p, p), padding="VALID",
                                    use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    n = (cfg.image_size // p) ** 2 + 1
    self.position_embedding = nnx.Embed(n, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pixels):
    x = self.patch_embedding(pixels)
    b, h, w, d = x.shape
    if h * w + 1 != self.position_embedding.num_embeddings:
      raise ValueError(f"CLIP was built for {self.position_embedding.num_embeddings - 1} patches, got {h}x{w}")
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, d))
    return jnp.concatenate([cls, x.reshape(b, h * w, d)], 1) + self.position_embedding.embedding[...].astype(x.dtype)


class VisionTransformer(nnx.Module):
  def __init__(self, cfg: TowerConfig, rngs, **kw):
    pd = kw.get("param_dtype", jnp.float32)
    self.embeddings = VisionEmbeddings(cfg, rngs, **kw)
    self.pre_layrnorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)  # sic, HF's name
    self.encoder = Encoder(cfg, rngs, **kw)
    self.post_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pd)

  def __call__(self, pixels):
    x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
    return self.post_layernorm(x[:, 0])


class TextEmbeddings(nnx.Module):
  def __init__(self, cfg: TowerConfig, rngs, *, dtype=None, param_dtype=jnp.float32):
    self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                     rngs=rngs)
    self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs)

  def __call__(self, ids):
    return self.token_embedding(ids) + self.position_embedding(jnp.arange(ids.shape[1]))[None]


class TextTransformer(nnx.Module):
  def __init__(self, cfg: TowerConfig, rngs, **kw):
    self.eos_token_id = cfg.eos_token_id
    self.embeddings = TextEmbeddings(cfg, rngs, **kw)
    self.encoder = Encoder(cfg, rngs, **kw)
    self.final_layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps,
                                      param_dtype=kw.get("param_dtype", jnp.float32))

  def __call__(self, ids):
    t = ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    x = self.final_layer_norm(self.encoder(self.embeddings(ids), causal))
    # EOT pooling: the highest id in legacy configs (open_clip's rule), else the first eos.
    eot = jnp.argmax(ids, -1) if self.eos_token_id == 2 else jnp.argmax(ids == self.eos_token_id, -1)
    return jnp.take_along_axis(x, eot[:, None, None], 1)[:, 0]


class CLIP(nnx.Module):
  def __init__(self, config: CLIPConfig, rngs: nnx.Rngs | None = None, *, dtype=None, param_dtype=jnp.float32):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.config = config
    self.vision_model = VisionTransformer(config.vision, rngs, **kw)
    self.text_model = TextTransformer(config.text, rngs, **kw)
    self.visual_projection = linear(config.vision.hidden_size, config.projection_dim, rngs, bias=False, **kw)
    self.text_projection = linear(config.text.hidden_size, config.projection_dim, rngs, bias=False, **kw)
    self.logit_scale = nnx.Param(jnp.asarray(2.6592, param_dtype))

  def get_image_features(self, pixels):
    """Preprocessed images (B, S, S, 3) -> projected embeddings (B, projection_dim), not normalised."""
    return self.visual_projection(self.vision_model(pixels)).astype(jnp.float32)

  def get_text_features(self, ids):
    return self.text_projection(self.text_model(ids)).astype(jnp.float32)


# Architectures for random-weight runs ("random:<name>" in reward_models.clip): timing and memory at the real
# shapes before anything is downloaded.
PRESETS = {
    "vit-h-14": CLIPConfig(vision=TowerConfig(1280, 5120, 32, 16, "gelu", image_size=224, patch_size=14),
                           text=TowerConfig(1024, 4096, 24, 16, "gelu"), projection_dim=1024),
    "vit-l-14": CLIPConfig(vision=TowerConfig(1024, 4096, 24, 16, "quick_gelu", image_size=224, patch_size=14),
                           text=TowerConfig(768, 3072, 12, 12, "quick_gelu"), projection_dim=768),
    "tiny": CLIPConfig(vision=TowerConfig(32, 64, 2, 4, "gelu", image_size=28, patch_size=14),
                       text=TowerConfig(32, 64, 2, 4, "gelu", vocab_size=100), projection_dim=16),
}
