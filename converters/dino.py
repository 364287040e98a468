"""DINOv2 (Dinov2Model) and DINOv1 (ViTModel) checkpoints -> pgen_jax.rewards.dino.Dino.

Reads the safetensors' own keys. `image_size` builds the model for the input size the metric uses
(e.g. 224 for DINOv2-L, whose checkpoint holds 37x37 positions for 518px): the position grid is
resampled here exactly as transformers does at run time (torch's bicubic, align_corners=False).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from converters.hf_params import leaf_key, majority_float_dtype, place
from converters.janus_hf import read_safetensors
from converters.safetensors_io import CheckpointError
from pgen_jax.rewards.dino import Dino, DinoConfig

_DROPPED = (r"^pooler\.",)  # ViTModel's tanh pooler: DINO features are the normed CLS token


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
  from flax import nnx
  d = Path(directory)
  try:
    config = DinoConfig.from_hf(json.loads((d / "config.json").read_text()))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{d / 'config.json'}: {e}") from e
  weights = next((d / f for f in ("model.safetensors.index.json", "model.safetensors") if (d / f).exists()), None)
  if weights is None:
    raise CheckpointError(f"{d}: no model.safetensors")
  tensors = {k: v for k, v in read_safetensors(weights).items() if not any(re.search(p, k) for p in _DROPPED)}
  if image_size and image_size != config.image_size:
    grid = image_size // config.patch_size
    shape, dt, load = tensors["embeddings.position_embeddings"]
    tensors["embeddings.position_embeddings"] = ((1, 1 + grid * grid, shape[2]), dt,
                                                 lambda load=load: resize_positions(load(), grid))
    config = dataclasses.replace(config, image_size=image_size)
  param_dtype = param_dtype if param_dtype is not None else majority_float_dtype(tensors)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Dino(config, nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)))
  return place(tensors, graphdef, abstract, mesh, leaf_key, str(d))
