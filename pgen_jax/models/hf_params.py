"""Flax NNX parameters <-> torch state dicts, for models whose paths mirror the torch module names.

Used by the checkpoint names of Janus (models/hf.py) and of CLIP, DINO, LPIPS (rewards/hf.py).

One rule: Linear `weight` (out, in) <-> `kernel` (in, out); Conv `weight` OIHW <-> `kernel` HWIO;
Embedding `weight` <-> `embedding`; norm `weight` <-> `scale`; `bias` stays. Tensors are read lazily
and each goes straight into its sharding on the mesh. A key function may return a key holding LAYER:
the parameter stacks one tensor per layer along its first axis (Janus's decoder layers), LAYER
standing for the layer's number.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from pgen_jax.errors import CheckpointError
from pgen_jax.models.sharding import param_shardings
from pgen_jax.safetensors_io import Reader

Tensor = tuple[tuple[int, ...], np.dtype, Callable[[], np.ndarray]]  # shape, dtype, loader

LEAF_TO_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
LAYER = "{layer}"


# ---- our path <-> transformers key --------------------------------------------------------------

def leaf_key(path: tuple) -> str:
  """'.'-joined path with the leaf renamed to torch's (a leaf without a rule keeps its name)."""
  *mods, leaf = (str(p) for p in path)
  return ".".join([*mods, LEAF_TO_HF.get(leaf, leaf)])


def hf_shape(path: tuple, shape: tuple[int, ...]) -> tuple[int, ...]:
  if str(path[-1]) == "kernel":
    if len(shape) == 2:
      return shape[::-1]
    if len(shape) == 4:
      return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


def from_hf(path: tuple, a: np.ndarray) -> np.ndarray:
  if str(path[-1]) == "kernel":
    return a.T if a.ndim == 2 else a.transpose(2, 3, 1, 0)  # (out,in) -> (in,out); OIHW -> HWIO
  return a


def to_hf(path: tuple, a: np.ndarray) -> np.ndarray:
  if str(path[-1]) == "kernel":
    return a.T if a.ndim == 2 else a.transpose(3, 2, 0, 1)
  return a


def per_tensor(key: str, shape: tuple[int, ...]) -> list[tuple[str, int | None]]:
  """The torch keys a parameter is made of, each with its index along the layer axis (None: unstacked)."""
  if LAYER not in key:
    return [(key, None)]
  return [(key.replace(LAYER, str(i)), i) for i in range(shape[0])]



def check_against(tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], where: str) -> None:
  """Raises one CheckpointError listing every missing/unexpected key, wrong shape and wrong dtype."""
  problems = []
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  if missing:
    problems.append(f"missing keys ({len(missing)}): " + ", ".join(
        f"{k} {list(expected[k])}" for k in missing[:20]))
  if unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(
        f"{k} {list(tensors[k][0])}" for k in unexpected[:20]))
  for k in sorted(set(tensors) & set(expected)):
    shape, dtype, _ = tensors[k]
    if tuple(shape) != tuple(expected[k]):
      problems.append(f"wrong shape for {k}: checkpoint {list(shape)}, model expects {list(expected[k])}")
    if not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
      problems.append(f"wrong dtype for {k}: {dtype.name}, expected a floating-point tensor")
  if problems:
    raise CheckpointError(f"{where} does not match the Janus config:\n  " + "\n  ".join(problems))


def majority_float_dtype(tensors: dict[str, Tensor]):
  floats = [d for _, d, _ in tensors.values() if d.kind == "f" or d.name == "bfloat16"]
  return max(set(floats), key=floats.count) if floats else np.dtype(np.float32)


def place(tensors: dict[str, Tensor], graphdef, abstract, mesh, key_fn: Callable[[tuple], str], where: str):
  """The module `graphdef` with every parameter read from `tensors` (checked first) onto `mesh`."""
  pure = nnx.to_pure_dict(abstract)
  paths = {tuple(k.key for k in p): x for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]}
  keys = {p: per_tensor(key_fn(p), x.shape) for p, x in paths.items()}
  check_against(tensors, {k: hf_shape(p, x.shape if i is None else x.shape[1:])
                          for p, x in paths.items() for k, i in keys[p]}, where)
  shardings = param_shardings(pure, mesh)
  done = [0]

  def put(path, x, sharding):
    p = tuple(k.key for k in path)
    arr = np.empty(x.shape, x.dtype)  # a stacked parameter is filled layer by layer
    for k, i in keys[p]:
      arr[() if i is None else i] = from_hf(p, tensors[k][2]())
    done[0] += 1
    if done[0] % 50 == 0 or done[0] == len(paths):
      logging.info("loaded %d/%d tensors from %s", done[0], len(paths), where)
    # Each device reads only its own slice of the host array.
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])

  nnx.replace_by_pure_dict(abstract, jax.tree_util.tree_map_with_path(put, pure, shardings))
  return nnx.merge(graphdef, abstract)


def state_dict(model, key_fn: Callable[[tuple], str]) -> dict[str, np.ndarray]:
  """torch-layout numpy state dict of a module."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]:
    p = tuple(k.key for k in path)
    a = np.asarray(jax.device_get(x))
    for k, i in per_tensor(key_fn(p), a.shape):
      out[k] = to_hf(p, a if i is None else a[i])
  return out


# ---- reading checkpoint files -----------------------------------------------------------------------

def read_safetensors(path: Path) -> dict[str, Tensor]:
  r = Reader(path)
  return {k: (r.shape(k), r.dtype(k), lambda k=k: r.get(k)) for k in r.keys()}


def read_torch(path: Path) -> dict[str, Tensor]:
  """pytorch_model.bin (the original Janus release): needs torch, loaded with weights_only."""
  try:
    import torch  # lazy: torch only for .bin checkpoints, never in a safetensors-only process
  except ImportError as e:
    raise CheckpointError(f"{path}: reading .bin checkpoints needs torch (pip install 'pgen_jax[dev]'), "
                          "or convert them to safetensors first") from e
  files = ([path.parent / f for f in sorted(set(json.loads(path.read_text())["weight_map"].values()))]
           if path.name.endswith(".index.json") else [path])
  out: dict[str, Tensor] = {}
  for f in files:
    try:
      sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for corrupt files
      raise CheckpointError(f"{f}: cannot load ({type(e).__name__}: {e})") from e
    for k, t in sd.items():
      out[k] = (tuple(t.shape), _torch_np_dtype(t.dtype), lambda t=t: _torch_to_numpy(t))
  return out


def _torch_np_dtype(dtype) -> np.dtype:
  import torch  # lazy: only reached from read_torch
  return np.dtype(ml_dtypes.bfloat16) if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # lazy: only reached from read_torch
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()
