"""LPIPS-VGG weights -> pgen_jax.rewards.lpips.LPIPS: torchvision's VGG16 state dict (features.*; the
classifier is dropped) and the lpips package's linear heads (weights/v0.1/vgg.pth: linK.model.1.weight).
Both are torch files, read with torch's weights_only loader (no arbitrary unpickling), or safetensors."""

from __future__ import annotations

import re
from pathlib import Path

from converters.hf_params import leaf_key, majority_float_dtype, place
from converters.janus_hf import read_safetensors, read_torch
from pgen_jax.rewards.lpips import LPIPS


def _read(path: Path):
  path = Path(path)
  return read_safetensors(path) if path.suffix == ".safetensors" else read_torch(path)


def load_lpips(vgg: str | Path, heads: str | Path, *, mesh, dtype=None, param_dtype=None) -> LPIPS:
  from flax import nnx
  tensors = {k: v for k, v in _read(vgg).items() if re.match(r"^features\.\d+\.(weight|bias)$", k)}
  tensors.update({k: v for k, v in _read(heads).items() if re.match(r"^lin\d\.model\.1\.weight$", k)})
  param_dtype = param_dtype if param_dtype is not None else majority_float_dtype(tensors)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LPIPS(nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)))
  return place(tensors, graphdef, abstract, mesh, leaf_key, f"{vgg} + {heads}")
