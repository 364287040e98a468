"""Janus-Pro architecture configs: presets, tiny test sizes, and HF config.json <-> ours.

Two on-disk config layouts exist for Janus: transformers' (text_config / vision_config / vq_config)
and the original deepseek one (language_config / vision_config.params / gen_*_config). Both map to
the same `JanusConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pgen_jax.errors import ConfigError
from pgen_jax.models.layers import ACTIVATIONS


# A Janus model's top-level parts: the units that train or stay frozen (sft.trainable, sft.lr_scales).
PARTS = ("vision_model", "aligner", "vqmodel", "generation_embeddings", "generation_aligner", "generation_head",
         "language_model", "lm_head")


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The LLaMA-style language model."""
  vocab_size: int = 102400
  hidden_size: int = 2048
  intermediate_size: int = 5632
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  num_key_value_heads: int = 16
  head_dim: int | None = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_position_embeddings: int = 16384
  attention_bias: bool = False
  mlp_bias: bool = False
  pad_token_id: int | None = None
  bos_token_id: int | None = 100000
  eos_token_id: int | None = 100001

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """SigLIP understanding encoder plus its aligner MLP (depth linear layers)."""
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  num_channels: int = 3
  image_size: int = 384
  patch_size: int = 16
  mlp_ratio: float = 4.0
  layer_norm_eps: float = 1e-6
  attention_bias: bool = True
  projection_dim: int = 2048
  depth: int = 2
  hidden_act: str = "gelu"  # encoder MLP and aligner

  @property
  def num_image_tokens(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def intermediate_size(self) -> int:
    return int(self.hidden_size * self.mlp_ratio)


@dataclasses.dataclass(frozen=True)
class VQConfig:
  """VQ-16 image tokenizer plus the generation aligner and head."""
  embed_dim: int = 8
  num_embeddings: int = 16384
  latent_channels: int = 256
  in_channels: int = 3
  out_channels: int = 3
  base_channels: int = 128
  channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  projection_dim: int = 2048
  num_hidden_layers: int = 2  # depth of the generation aligner
  image_token_embed_dim: int = 2048
  hidden_act: str = "gelu"  # generation aligner and head


@dataclasses.dataclass(frozen=True)
class JanusConfig:
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  vq: VQConfig = VQConfig()
  image_token_id: int = 100581

  @property
  def num_image_tokens(self) -> int:
    return self.vision.num_image_tokens

  @property
  def image_grid(self) -> int:
    """Side of the square VQ token grid (24 for 384px images)."""
    return self.vision.image_size // self.vision.patch_size

  def validate(self) -> "JanusConfig":
    t, v, q = self.text, self.vision, self.vq
    _require(t.num_attention_heads % t.num_key_value_heads == 0, "text_config.num_key_value_heads",
             f"{t.num_key_value_heads} does not divide num_attention_heads={t.num_attention_heads}")
    _require(t.head_dim is not None or t.hidden_size % t.num_attention_heads == 0,
             "text_config.hidden_size", f"{t.hidden_size} is not a multiple of num_attention_heads")
    _require(t.dim_per_head % 2 == 0, "text_config.head_dim", "RoPE needs an even head_dim")
    _require(v.hidden_size % v.num_attention_heads == 0, "vision_config.hidden_size",
             f"{v.hidden_size} is not a multiple of num_attention_heads={v.num_attention_heads}")
    _require(v.image_size % v.patch_size == 0, "vision_config.image_size",
             f"{v.image_size} is not a multiple of patch_size={v.patch_size}")
    _require(v.projection_dim == t.hidden_size, "vision_config.projection_dim",
             f"{v.projection_dim} must equal text hidden_size={t.hidden_size}")
    _require(q.image_token_embed_dim == t.hidden_size and q.projection_dim == t.hidden_size,
             "vq_config.projection_dim", "generation aligner/head width must equal text hidden_size")
    for key, act in (("vision_config.hidden_act", v.hidden_act), ("vq_config.hidden_act", q.hidden_act)):
      _require(act in ACTIVATIONS, key, f"{act!r} unsupported; choose one of {sorted(ACTIVATIONS)}")
    factor = 2 ** (len(q.channel_multiplier) - 1)
    _require(factor == v.patch_size, "vq_config.channel_multiplier",
             f"VQ downsampling factor {factor} must equal vision patch_size={v.patch_size} so that "
             "one image is num_image_tokens VQ tokens")
    for c in {q.base_channels * m for m in q.channel_multiplier}:
      _require(c % 32 == 0, "vq_config.base_channels", f"GroupNorm(32) needs channels divisible by 32, got {c}")
    _require(0 <= self.image_token_id < t.vocab_size, "image_token_id",
             f"{self.image_token_id} outside vocab of {t.vocab_size}")
    return self

  # ---- serialisation ------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "JanusConfig":
    """Inverse of `to_dict` (our own checkpoint's config)."""
    try:
      vq = dict(d["vq"])
      vq["channel_multiplier"] = tuple(vq["channel_multiplier"])
      return cls(text=TextConfig(**d["text"]), vision=VisionConfig(**d["vision"]), vq=VQConfig(**vq),
                 image_token_id=d["image_token_id"]).validate()
    except (KeyError, TypeError) as e:
      raise ConfigError(f"not a pgen_jax Janus config: {e}") from e

  @classmethod
  def from_hf(cls, d: dict[str, Any]) -> "JanusConfig":
    """From a config.json in transformers' or deepseek's layout."""
    if "text_config" in d:
      return _from_transformers(d).validate()
    if "language_config" in d:
      return _from_deepseek(d).validate()
    raise ConfigError("config.json has neither 'text_config' (transformers Janus) nor "
                      "'language_config' (deepseek Janus)")

  def to_hf(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A transformers JanusConfig dict; fields of `base` (an original config.json) are kept."""
    t, v, q = self.text, self.vision, self.vq
    out = json.loads(json.dumps(base)) if base and "text_config" in base else {}
    text = out.setdefault("text_config", {})
    text.update(model_type="llama", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
                head_dim=t.dim_per_head, rms_norm_eps=t.rms_norm_eps, hidden_act="silu",
                max_position_embeddings=t.max_position_embeddings, attention_bias=t.attention_bias,
                mlp_bias=t.mlp_bias, pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id,
                eos_token_id=t.eos_token_id, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta})
    text.pop("rope_theta", None)
    vision = out.setdefault("vision_config", {})
    vision.update(model_type="janus_vision_model", hidden_size=v.hidden_size,
                  num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                  num_channels=v.num_channels, image_size=v.image_size, patch_size=v.patch_size,
                  mlp_ratio=v.mlp_ratio, layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act,
                  attention_bias=v.attention_bias, projection_dim=v.projection_dim, depth=v.depth,
                  num_image_tokens=v.num_image_tokens, use_qk_norm=False)
    vq = out.setdefault("vq_config", {})
    vq.update(model_type="janus_vqgan", embed_dim=q.embed_dim, num_embeddings=q.num_embeddings,
              latent_channels=q.latent_channels, in_channels=q.in_channels,
              out_channels=q.out_channels, base_channels=q.base_channels,
              channel_multiplier=list(q.channel_multiplier), num_res_blocks=q.num_res_blocks,
              projection_dim=q.projection_dim, num_hidden_layers=q.num_hidden_layers,
              image_token_embed_dim=q.image_token_embed_dim, hidden_act=q.hidden_act,
              double_latent=False, num_patches=self.image_grid)
    out.update(model_type="janus", architectures=["JanusForConditionalGeneration"],
               image_token_id=self.image_token_id, tie_word_embeddings=False)
    return out


def _require(ok: bool, key: str, why: str) -> None:
  if not ok:
    raise ConfigError(f"{key}: {why}")


def _pick(cls, d: dict[str, Any], where: str, **renames: str) -> dict[str, Any]:
  """The fields of dataclass `cls` present in `d` (HF key names may differ, see renames)."""
  names = {f.name for f in dataclasses.fields(cls)}
  out = {}
  for k, v in d.items():
    k = renames.get(k, k)
    if k in names and v is not None:
      out[k] = v
  for f in dataclasses.fields(cls):
    if f.name in out and f.type in ("int", "float") and not isinstance(out[f.name], (int, float)):
      raise ConfigError(f"{where}.{f.name}: expected a number, got {out[f.name]!r}")
  return out


def _text_from_llama(d: dict[str, Any], where: str) -> TextConfig:
  if d.get("hidden_act", "silu") != "silu":
    raise ConfigError(f"{where}.hidden_act: only 'silu' is supported, got {d['hidden_act']!r}")
  rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ConfigError(f"{where}.rope_parameters: only default RoPE is supported, got {rope!r}")
  fields = _pick(TextConfig, d, where)
  theta = rope.get("rope_theta", d.get("rope_theta"))
  if theta is not None:
    fields["rope_theta"] = float(theta)
  fields.setdefault("num_key_value_heads", fields.get("num_attention_heads", TextConfig.num_attention_heads))
  for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
    if isinstance(fields.get(k), list):
      fields[k] = fields[k][0]
  return TextConfig(**fields)


def _from_transformers(d: dict[str, Any]) -> JanusConfig:
  vision = dict(d.get("vision_config") or {})
  if vision.get("use_qk_norm"):
    raise ConfigError("vision_config.use_qk_norm: not used by Janus and not supported")
  for key in ("image_size", "patch_size"):
    if isinstance(vision.get(key), (list, tuple)):
      vision[key] = vision[key][0]
  vq = dict(d.get("vq_config") or {})
  if vq.get("double_latent"):
    raise ConfigError("vq_config.double_latent: not supported")
  if "channel_multiplier" in vq:
    vq["channel_multiplier"] = tuple(vq["channel_multiplier"])
  return JanusConfig(
      text=_text_from_llama(d.get("text_config") or {}, "text_config"),
      vision=VisionConfig(**_pick(VisionConfig, vision, "vision_config")),
      vq=VQConfig(**_pick(VQConfig, vq, "vq_config")),
      image_token_id=d.get("image_token_id", JanusConfig.image_token_id))


def _from_deepseek(d: dict[str, Any]) -> JanusConfig:
  """The original MultiModalityCausalLM config: only a few params, the rest are fixed presets."""
  def params(name):
    return (d.get(name) or {}).get("params") or {}
  lang = dict(d["language_config"])
  vis, align = params("vision_config"), params("aligner_config")
  gen_vis, gen_align, gen_head = params("gen_vision_config"), params("gen_aligner_config"), params("gen_head_config")
  model_name = vis.get("model_name", "siglip_large_patch16_384")
  if model_name != "siglip_large_patch16_384":
    raise ConfigError(f"vision_config.params.model_name: only siglip_large_patch16_384 is known, got {model_name!r}")
  width = lang.get("hidden_size", TextConfig.hidden_size)
  vision = VisionConfig(image_size=vis.get("image_size", 384), projection_dim=align.get("n_embed", width),
                        depth=align.get("depth", 2))
  vq = VQConfig(embed_dim=gen_vis.get("n_embed", 8), num_embeddings=gen_vis.get("image_token_size", 16384),
                projection_dim=gen_align.get("n_embed", width), num_hidden_layers=gen_align.get("depth", 2),
                image_token_embed_dim=gen_head.get("image_token_embed", width))
  return JanusConfig(text=_text_from_llama(lang, "language_config"), vision=vision, vq=vq,
                     image_token_id=d.get("image_token_id", JanusConfig.image_token_id))


# ---- presets ------------------------------------------------------------------------------------

def janus_pro_1b() -> JanusConfig:
  return JanusConfig().validate()


def janus_pro_7b() -> JanusConfig:
  text = TextConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                    num_attention_heads=32, num_key_value_heads=32)
  return JanusConfig(text=text, vision=VisionConfig(projection_dim=4096),
                     vq=VQConfig(projection_dim=4096, image_token_embed_dim=4096)).validate()


def tiny(hidden: int = 64, heads: int = 4, kv_heads: int = 2, layers: int = 2, vocab: int = 320,
         image_size: int = 16, patch: int = 4, max_positions: int = 512) -> JanusConfig:
  """A few-kB Janus for tests and the CPU demo; the VQ downsampling factor equals `patch`."""
  levels = patch.bit_length()  # 2**(levels-1) == patch
  mult = tuple([1] + [2] * (levels - 1))
  text = TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2 + 8,
                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                    max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2)
  vision = VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                        patch_size=patch, projection_dim=hidden)
  vq = VQConfig(num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=mult,
                num_res_blocks=1, projection_dim=hidden, image_token_embed_dim=hidden)
  return JanusConfig(text=text, vision=vision, vq=vq, image_token_id=vocab - 1).validate()


def demo() -> JanusConfig:
  """The CPU demo's model: tiny, with 32px images (8x8 = 64 image tokens) and room for 3 history items.
  Two attention heads of 32: on CPU, four heads of 16 made an SFT step 1.8x slower (small batched dots);
  one head of 64 is 4% faster than two but its SFT failed the demo's probe for 2 of 5 seeds
  (docs/benchmarks.md, SFT step)."""
  return tiny(image_size=32, patch=4, heads=2, kv_heads=2)


def mid() -> JanusConfig:
  """A CPU-sized benchmark model with the real token layout: LM 256 wide, 4 layers, 96px images
  tokenized to 24 x 24 = 576 image tokens, room for 5 history images."""
  return tiny(hidden=256, heads=4, kv_heads=4, layers=4, image_size=96, patch=4, max_positions=4096)


PRESETS = {"janus-pro-1b": janus_pro_1b, "janus-pro-7b": janus_pro_7b, "tiny": tiny, "demo": demo, "mid": mid}


def preset(name: str) -> JanusConfig:
  if name not in PRESETS:
    raise ConfigError(f"model preset {name!r} unknown; choose one of {sorted(PRESETS)}")
  return PRESETS[name]()
