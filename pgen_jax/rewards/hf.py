"""CLIP, DINO and LPIPS checkpoints -> our reward modules (pgen_jax.rewards.clip / dino / lpips).

CLIP: transformers CLIPModel directories (config.json + model.safetensors, or sharded) and open_clip
ones (open_clip_config.json + open_clip_model.safetensors, or open_clip_pytorch_model.bin read with
torch's weights_only loader), whose keys are renamed to transformers' (fused attention split,
projections transposed).

DINO: DINOv2 (Dinov2Model) and DINOv1 (ViTModel) safetensors, by their own keys. `image_size` builds
the model for the input size the metric uses (e.g. 224 for DINOv2-L, whose checkpoint holds 37x37
positions for 518px): the position grid is resampled here exactly as transformers does at run time
(torch's bicubic, align_corners=False).

LPIPS-VGG: torchvision's VGG16 state dict (features.*; the classifier is dropped) and the lpips
package's linear heads (weights/v0.1/vgg.pth: linK.model.1.weight). Both are torch files, read with
torch's weights_only loader (no arbitrary unpickling), or safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from flax import nnx

from pgen_jax.errors import CheckpointError
from pgen_jax.models.hf_params import Tensor, leaf_key, majority_float_dtype, place, read_safetensors, read_torch
from pgen_jax.rewards.clip import CLIP, CLIPConfig, TowerConfig
from pgen_jax.rewards.dino import Dino, DinoConfig
from pgen_jax.rewards.lpips import LPIPS


# ---- CLIP ------------------------------------------------------------------------------------------

_CLIP_DROPPED = (r"position_ids$", r"^attn_mask$", r"\.attn_mask$")


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
  tensors = {k: v for k, v in tensors.items() if not any(re.search(p, k) for p in _CLIP_DROPPED)}
  return config, tensors


def load_clip(directory: str | Path, *, mesh, dtype=None, param_dtype=None) -> CLIP:
  """A frozen CLIP on `mesh` from a transformers or open_clip directory."""
  config, tensors = read_clip(directory)
  param_dtype = param_dtype if param_dtype is not None else majority_float_dtype(tensors)
  model = nnx.eval_shape(lambda: CLIP(config, nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
  graphdef, abstract = nnx.split(model)
  return place(tensors, graphdef, abstract, mesh, leaf_key, str(directory))


def load_clip_tokenizer(directory: str | Path):
  """The CLIP BPE tokenizer saved beside the weights (vocab.json + merges.txt, as both the transformers
  and the open_clip hub layouts ship them), or None when the directory has none."""
  d = Path(directory)
  if not ((d / "vocab.json").exists() and (d / "merges.txt").exists()):
    return None
  import transformers  # lazy: only the eval's text metric needs it; keeps transformers out of training
  return transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


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


# ---- DINO ------------------------------------------------------------------------------------------

_DINO_DROPPED = (r"^pooler\.",)  # ViTModel's tanh pooler: DINO features are the normed CLS token


def _cubic(t, a=-0.75):
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's bicubic upsample/downsample along one axis, align_corners=False."""
  scale = n_in / n_out
  src = (np.arange(n_out) + 0.5) * scale - 0.5
  base = np.floor(src).astype(int)
  frac = src - base
  m = np.zeros((n_out, n_in))
  for k in range(-1, 3):
    idx = np.clip(base + k, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), _cubic(frac - k))
  return m


def resize_positions(pos: np.ndarray, grid: int) -> np.ndarray:
  """(1, 1 + n*n, D) position embeddings -> (1, 1 + grid*grid, D)."""
  n = int(round((pos.shape[1] - 1) ** 0.5))
  if n == grid:
    return pos
  patches = pos[0, 1:].astype(np.float32).reshape(n, n, -1)
  m = _bicubic_matrix(n, grid)
  out = np.einsum("ai,bj,ijd->abd", m, m, patches).reshape(1, grid * grid, -1)
  return np.concatenate([pos[:, :1].astype(np.float32), out], 1).astype(pos.dtype)


def load_dino(directory: str | Path, *, mesh, image_size: int | None = None, dtype=None, param_dtype=None) -> Dino:
  """A frozen DINO on `mesh`, built for `image_size` inputs (default: the checkpoint's)."""
  d = Path(directory)
  try:
    config = DinoConfig.from_hf(json.loads((d / "config.json").read_text()))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{d / 'config.json'}: {e}") from e
  weights = next((d / f for f in ("model.safetensors.index.json", "model.safetensors") if (d / f).exists()), None)
  if weights is None:
    raise CheckpointError(f"{d}: no model.safetensors")
  tensors = {k: v for k, v in read_safetensors(weights).items() if not any(re.search(p, k) for p in _DINO_DROPPED)}
  if image_size and image_size != config.image_size:
    grid = image_size // config.patch_size
    shape, dt, load = tensors["embeddings.position_embeddings"]
    tensors["embeddings.position_embeddings"] = ((1, 1 + grid * grid, shape[2]), dt,
                                                 lambda load=load: resize_positions(load(), grid))
    config = dataclasses.replace(config, image_size=image_size)
  param_dtype = param_dtype if param_dtype is not None else majority_float_dtype(tensors)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Dino(config, nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)))
  return place(tensors, graphdef, abstract, mesh, leaf_key, str(d))


# ---- LPIPS -----------------------------------------------------------------------------------------

def _read(path: Path):
  path = Path(path)
  return read_safetensors(path) if path.suffix == ".safetensors" else read_torch(path)


def load_lpips(vgg: str | Path, heads: str | Path, *, mesh, dtype=None, param_dtype=None) -> LPIPS:
  tensors = {k: v for k, v in _read(vgg).items() if re.match(r"^features\.\d+\.(weight|bias)$", k)}
  tensors.update({k: v for k, v in _read(heads).items() if re.match(r"^lin\d\.model\.1\.weight$", k)})
  param_dtype = param_dtype if param_dtype is not None else majority_float_dtype(tensors)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LPIPS(nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)))
  return place(tensors, graphdef, abstract, mesh, leaf_key, f"{vgg} + {heads}")
