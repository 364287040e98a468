"""Janus parameters between Hugging Face layouts and our Flax NNX model.

Our parameter paths mirror transformers' JanusForConditionalGeneration names, so the rule of
models/hf_params.py maps them, after dropping the `model.` prefix (all but lm_head). The original deepseek layout is first
renamed to transformers' names (fused SigLIP qkv split, pos_embed squeezed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np

from pgen_jax import safetensors_io
from pgen_jax.errors import CheckpointError, ConfigError
from pgen_jax.fileio import atomic_directory
from pgen_jax.models import lora
from pgen_jax.models.config import JanusConfig
from pgen_jax.models.hf_params import LAYER, Tensor, leaf_key, read_safetensors, read_torch, state_dict


def hf_key(path: tuple) -> str:
  """Our parameter path -> transformers JanusForConditionalGeneration key (with LAYER for the stacked
  decoder layers)."""
  key = re.sub(r"^language_model\.layers\.", f"language_model.layers.{LAYER}.", leaf_key(path))
  return key if str(path[0]) == "lm_head" else "model." + key


# ---- deepseek -> transformers names --------------------------------------------------------------

_TOWER = "vision_model.vision_tower."
_DEEPSEEK_RENAMES = [  # applied in order to each key
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (rf"^{re.escape(_TOWER)}patch_embed\.proj\.", "model.vision_model.embeddings.patch_embedding."),
    (rf"^{re.escape(_TOWER)}pos_embed$", "model.vision_model.embeddings.position_embedding.weight"),
    (rf"^{re.escape(_TOWER)}norm\.", "model.vision_model.post_layernorm."),
    (rf"^{re.escape(_TOWER)}blocks\.(\d+)\.norm(\d)\.", r"model.vision_model.encoder.layers.\1.layer_norm\2."),
    (rf"^{re.escape(_TOWER)}blocks\.(\d+)\.attn\.proj\.", r"model.vision_model.encoder.layers.\1.self_attn.projection_layer."),
    (rf"^{re.escape(_TOWER)}blocks\.(\d+)\.attn\.qkv\.", r"model.vision_model.encoder.layers.\1.self_attn.qkv."),
    (rf"^{re.escape(_TOWER)}blocks\.(\d+)\.mlp\.", r"model.vision_model.encoder.layers.\1.mlp."),
    (r"^aligner\.", "model.aligner."),
    (r"^gen_aligner\.", "model.generation_aligner."),
    (r"^(model\.(?:aligner|generation_aligner))\.layers\.0\.", r"\1.fc1."),
    (r"^gen_head\.output_mlp_projector\.", "model.generation_head.proj_out."),
    (r"^gen_head\.vision_head\.", "model.generation_head.vision_head."),
    (r"^gen_embed\.", "model.generation_embeddings."),
    (r"^gen_vision_model\.", "model.vqmodel."),
    (r"^(model\.vqmodel\.encoder)\.conv_blocks\.", r"\1.down."),
    (r"^(model\.vqmodel\.decoder)\.conv_blocks\.", r"\1.up."),
    (r"^(model\.vqmodel\..*)\.res\.", r"\1.block."),
    (r"^(model\.vqmodel\..*\.mid)\.0\.", r"\1.block_1."),
    (r"^(model\.vqmodel\..*\.mid)\.1\.", r"\1.attn_1."),
    (r"^(model\.vqmodel\..*\.mid)\.2\.", r"\1.block_2."),
]
# Tensors of the original checkpoint that Janus never uses.
_DEEPSEEK_DROPPED = [rf"^{re.escape(_TOWER)}attn_pool\.", r"\.codebook_used$", r"\.rotary_emb\.inv_freq$"]


def _aligner_hidden(key: str) -> str:
  # deepseek's Sequential(Linear, GELU, Linear, ...): layers.2k -> hidden_layers.(k-1)
  m = re.match(r"^(model\.(?:aligner|generation_aligner))\.layers\.(\d+)\.(.*)$", key)
  if m and int(m.group(2)) % 2 == 0:
    return f"{m.group(1)}.hidden_layers.{int(m.group(2)) // 2 - 1}.{m.group(3)}"
  return key


def deepseek_to_transformers(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
  out: dict[str, Tensor] = {}
  for name, (shape, dtype, load) in tensors.items():
    if any(re.search(p, name) for p in _DEEPSEEK_DROPPED):
      continue
    key = name
    for pattern, repl in _DEEPSEEK_RENAMES:
      key = re.sub(pattern, repl, key)
    key = _aligner_hidden(key)
    if ".self_attn.qkv." in key:
      if shape[0] % 3:
        raise CheckpointError(f"{name}: fused qkv of shape {shape} does not split in three")
      n = shape[0] // 3
      for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        out[key.replace(".qkv.", f".{part}.")] = ((n, *shape[1:]), dtype,
                                                  lambda load=load, i=i, n=n: load()[i * n:(i + 1) * n])
    elif key == "model.vision_model.embeddings.position_embedding.weight" and len(shape) == 3:
      out[key] = (shape[1:], dtype, lambda load=load: load()[0])
    else:
      out[key] = (shape, dtype, load)
  return out


# ---- reading a checkpoint directory ---------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")


class HFCheckpoint:
  """A Janus checkpoint directory in transformers' or deepseek's layout, read lazily.

  `tensors` maps transformers key -> (shape, dtype, loader); `config` is our JanusConfig.
  """

  def __init__(self, directory: str | Path):
    self.dir = Path(directory)
    cfg_path = self.dir / "config.json"
    try:
      self.raw_config = json.loads(cfg_path.read_text())
    except OSError as e:
      raise CheckpointError(f"{cfg_path}: cannot read ({e.strerror})") from e
    except ValueError as e:
      raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    try:
      self.config = JanusConfig.from_hf(self.raw_config)
    except ConfigError as e:
      raise CheckpointError(f"{cfg_path}: {e}") from e
    self.layout = "transformers" if "text_config" in self.raw_config else "deepseek"
    weights = next((self.dir / f for f in WEIGHT_FILES if (self.dir / f).exists()), None)
    if weights is None:
      raise CheckpointError(f"{self.dir}: no weights (looked for {', '.join(WEIGHT_FILES)})")
    raw = read_torch(weights) if ".bin" in weights.name else read_safetensors(weights)
    if self.layout == "deepseek":
      self.tensors = deepseek_to_transformers(raw)
      self.config = _deepseek_shapes(self.config, self.tensors, cfg_path)
    else:
      self.tensors = raw
    tied = self.raw_config.get("tie_word_embeddings") or (self.raw_config.get("text_config") or {}).get(
        "tie_word_embeddings")
    if tied and "lm_head.weight" not in self.tensors and "model.language_model.embed_tokens.weight" in self.tensors:
      # A tied checkpoint stores the embedding once; our lm_head is its own (untied) copy.
      self.tensors["lm_head.weight"] = self.tensors["model.language_model.embed_tokens.weight"]


def _deepseek_shapes(config: JanusConfig, tensors: dict[str, Tensor], where: Path) -> JanusConfig:
  """The deepseek config.json only names the towers (siglip_large_patch16_384, VQ-16); their sizes
  are read off the weights, so a variant with other widths or depths converts too."""
  def shape(key):
    if key not in tensors:
      raise CheckpointError(f"{where}: deepseek checkpoint lacks {key}")
    return tensors[key][0]

  def count(prefix):
    return len({k[len(prefix):].split(".")[0] for k in tensors if k.startswith(prefix)})

  vis = "model.vision_model."
  width = shape(vis + "embeddings.position_embedding.weight")[-1]
  vision = dataclasses.replace(
      config.vision, hidden_size=width, patch_size=shape(vis + "embeddings.patch_embedding.weight")[-1],
      num_hidden_layers=count(vis + "encoder.layers."),
      mlp_ratio=shape(vis + "encoder.layers.0.mlp.fc1.weight")[0] / width,
      num_attention_heads=16 if width % 16 == 0 else config.vision.num_attention_heads)
  vq = "model.vqmodel."
  base = shape(vq + "encoder.conv_in.weight")[0]
  levels = count(vq + "encoder.down.")
  mult = tuple(shape(vq + f"encoder.down.{i}.block.0.conv1.weight")[0] // base for i in range(levels))
  vq_cfg = dataclasses.replace(
      config.vq, base_channels=base, channel_multiplier=mult, num_res_blocks=count(vq + "encoder.down.0.block."),
      latent_channels=shape(vq + "encoder.conv_out.weight")[0],
      num_embeddings=shape(vq + "quantize.embedding.weight")[0], embed_dim=shape(vq + "quantize.embedding.weight")[1])
  try:
    return dataclasses.replace(config, vision=vision, vq=vq_cfg).validate()
  except ConfigError as e:
    raise CheckpointError(f"{where}: {e}") from e


# ---- writing a transformers directory --------------------------------------------------------------

def hf_tensors(model) -> dict[str, np.ndarray]:
  """transformers state dict (numpy) of a Janus model."""
  return state_dict(model, hf_key)


def export_hf(model, dst: str | os.PathLike, *, side_files: str | os.PathLike | None = None,
              adapter: str | os.PathLike | None = None) -> None:
  """Writes config.json + model.safetensors that JanusForConditionalGeneration loads; `adapter` (a PEFT
  directory, export_peft's) is copied to dst/adapter, in the same atomic write."""
  with atomic_directory(dst) as tmp:
    if adapter is not None:
      shutil.copytree(adapter, tmp / "adapter")
    base = None
    if side_files is not None and Path(side_files).is_dir():
      for f in Path(side_files).iterdir():
        shutil.copy2(f, tmp / f.name)
      if (tmp / "config.json").exists():
        base = json.loads((tmp / "config.json").read_text())
    (tmp / "config.json").write_text(json.dumps(model.config.to_hf(base), indent=2))
    safetensors_io.write(tmp / "model.safetensors", hf_tensors(model))


def export_peft(model, dst: str | os.PathLike, *, base_model: str = "") -> None:
  """The LoRA adapters of a Janus made by models.lora.apply_lora in PEFT's format for transformers'
  JanusForConditionalGeneration: adapter_config.json + adapter_model.safetensors, lora_A (rank, in) and
  lora_B (out, rank) per layer and projection, scaled by lora_alpha / r as ours are, so that
  `peft.PeftModel.from_pretrained(janus, dst)` computes as our adapted model. base_model: what
  base_model_name_or_path records (the directory or hub id of the base the adapters were trained on)."""
  cfg = lora.lora_config(model)
  if cfg is None:
    raise ValueError("the model carries no LoRA adapters (lora.apply_lora); export_hf writes a whole model")
  tensors, modules = {}, []
  for path, linear in lora.adapted_modules(model):
    name = hf_key(path + ("kernel",)).removesuffix(".weight")  # holds LAYER: one module per layer
    a, b = (np.asarray(jax.device_get(x[...]), np.float32) for x in (linear.kernel_lora_a, linear.kernel_lora_b))
    for i in range(a.shape[0]):
      module = name.replace(LAYER, str(i))
      modules.append(module)
      tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
      tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
  config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model or None,
            "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
            "modules_to_save": None, "target_modules": sorted(modules)}  # full names: nothing else matches
  with atomic_directory(dst) as tmp:
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    safetensors_io.write(tmp / "adapter_model.safetensors", tensors)
