"""CLIP checkpoints -> pgen_jax.rewards.clip.CLIP: transformers CLIPModel directories and open_clip ones.

transformers: config.json + model.safetensors (or sharded). open_clip: open_clip_config.json +
open_clip_model.safetensors (or open_clip_pytorch_model.bin, read with torch's weights_only loader),
whose keys are renamed to transformers' (fused attention split, projections transposed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from converters.hf_params import Tensor, leaf_key, majority_float_dtype, place
from converters.janus_hf import read_safetensors, read_torch
from converters.safetensors_io import CheckpointError
from pgen_jax.rewards.clip import CLIP, CLIPConfig, TowerConfig

_DROPPED = (r"position_ids$", r"^attn_mask$", r"\.attn_mask$")


def open_clip_config(d: dict) -> CLIPConfig:
  m = d.get("model_cfg", d)
  v, t = m["vision_cfg"], m["text_cfg"]
  act = "quick_gelu" if m.get("quick_gelu") else "gelu"
  width, twidth = v["width"], t["width"]
  vision = TowerConfig(hidden_size=width, intermediate_size=int(width * v.get("mlp_ratio", 4.0)),
                       num_hidden_layers=v["layers"], num_attention_heads=width // v.get("head_width", 64),
                       hidden_act=act, image_size=v["image_size"], patch_size=v["patch_size"])
  text = TowerConfig(hidden_size=twidth, intermediate_size=int(twidth * t.get("mlp_ratio", 4.0)),
                     num_hidden_layers=t["layers"], num_attention_heads=t.get("heads", twidth // 64), hidden_act=act,
                     vocab_size=t.get("vocab_size", 49408), max_position_embeddings=t.get("context_length", 77))
  return CLIPConfig(vision=vision, text=text, projection_dim=m["embed_dim"])


_OPEN_CLIP = [
    (r"^visual\.conv1\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
    (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
    (r"^visual\.ln_pre\.", "vision_model.pre_layrnorm."),
    (r"^visual\.ln_post\.", "vision_model.post_layernorm."),
    (r"^visual\.transformer\.resblocks\.", "vision_model.encoder.layers."),
    (r"^transformer\.resblocks\.", "text_model.encoder.layers."),
    (r"^token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^ln_final\.", "text_model.final_layer_norm."),
    (r"\.ln_1\.", ".layer_norm1."), (r"\.ln_2\.", ".layer_norm2."),
    (r"\.attn\.out_proj\.", ".self_attn.out_proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."),
]


def open_clip_to_transformers(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
  out: dict[str, Tensor] = {}
  for name, (shape, dtype, load) in tensors.items():
    if name in ("visual.proj", "text_projection"):  # stored (in, out), used as x @ proj
      key = "visual_projection.weight" if name == "visual.proj" else "text_projection.weight"
      out[key] = (shape[::-1], dtype, lambda load=load: load().T)
      continue
    key = name
    for pattern, repl in _OPEN_CLIP:
      key = re.sub(pattern, repl, key)
    m = re.match(r"^(.*)\.attn\.in_proj_(weight|bias)$", key)
    if m:
      n = shape[0] // 3
      for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{m.group(1)}.self_attn.{part}.{m.group(2)}"] = ((n, *shape[1:]), dtype,
                                                             lambda load=load, i=i, n=n: load()[i * n:(i + 1) * n])
    else:
      out[key] = (shape, dtype, load)
  return out


def read_clip(directory: str | Path) -> tuple[CLIPConfig, dict[str, Tensor]]:
  d = Path(directory)
  if (d / "open_clip_config.json").exists():
    config = open_clip_config(json.loads((d / "open_clip_config.json").read_text()))
    weights = next((d / f for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                    if (d / f).exists()), None)
    if weights is None:
      raise CheckpointError(f"{d}: open_clip_config.json but no open_clip_model.safetensors / .bin")
    raw = read_torch(weights) if weights.suffix == ".bin" else read_safetensors(weights)
    tensors = open_clip_to_transformers(raw)
  elif (d / "config.json").exists():
    config = CLIPConfig.from_hf(json.loads((d / "config.json").read_text()))
    weights = next((d / f for f in ("model.safetensors.index.json", "model.safetensors") if (d / f).exists()), None)
    if weights is None:
      raise CheckpointError(f"{d}: no model.safetensors")
    tensors = read_safetensors(weights)
  else:
    raise CheckpointError(f"{d}: neither open_clip_config.json nor config.json")
  tensors = {k: v for k, v in tensors.items() if not any(re.search(p, k) for p in _DROPPED)}
  return config, tensors


def load_clip(directory: str | Path, *, mesh, dtype=None, param_dtype=None) -> CLIP:
  """A frozen CLIP on `mesh` from a transformers or open_clip directory."""
  from flax import nnx
  config, tensors = read_clip(directory)
  param_dtype = param_dtype if param_dtype is not None else majority_float_dtype(tensors)
  model = nnx.eval_shape(lambda: CLIP(config, nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
  graphdef, abstract = nnx.split(model)
  return place(tensors, graphdef, abstract, mesh, leaf_key, str(directory))


def tokenize(texts: list[str], tokenizer, context_length: int = 77) -> np.ndarray:
  """open_clip's ids: <start> + BPE + <end>, cut to the context keeping <end> last, zero-padded.

  `tokenizer`: a transformers CLIP tokenizer (its BPE equals open_clip's); its own padding (with the
  end token) and truncation are not used.
  """
  sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
  out = np.zeros((len(texts), context_length), np.int32)
  for i, text in enumerate(texts):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:context_length - 2]
    row = [sot] + ids + [eot]
    out[i, :len(row)] = row
  return out
