"""Safetensors read/write with numpy only (bf16 through ml_dtypes), no torch.

The format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian bytes. Reading is lazy (memory-mapped), so a multi-GB checkpoint is never
held twice in host memory.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
from pgen_jax.errors import CheckpointError

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class Reader:
  """All tensors of one safetensors file, or of a sharded set listed by a *.index.json."""

  def __init__(self, path: str | os.PathLike):
    path = Path(path)
    self.entries: dict[str, tuple[Path, str, tuple[int, ...], int, int]] = {}
    if path.name.endswith(".index.json"):
      try:
        weight_map = json.loads(path.read_text())["weight_map"]
      except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a safetensors index ({e})") from e
      files = sorted(set(weight_map.values()))
      for f in files:
        self._scan(path.parent / f)
      listed, found = set(weight_map), set(self.entries)
      if listed != found:
        raise CheckpointError(f"{path}: index lists {sorted(listed - found)[:5]} not in the shards and "
                              f"shards hold {sorted(found - listed)[:5]} not in the index")
    else:
      self._scan(path)

  def _scan(self, file: Path) -> None:
    try:
      size = file.stat().st_size
      with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
          raise CheckpointError(f"{file}: truncated (no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
          raise CheckpointError(f"{file}: truncated or not safetensors (header of {n} bytes, file of {size})")
        header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{file}: unreadable safetensors header ({e})") from e
    header.pop("__metadata__", None)
    base = 8 + n
    for name, info in header.items():
      try:
        dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
      except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: bad header entry for {name!r}") from e
      if dtype not in DTYPES:
        raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {dtype}")
      if base + end > size:
        raise CheckpointError(f"{file}: truncated: tensor {name!r} needs bytes up to {base + end}, "
                              f"file has {size}")
      if end - start != int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize:
        raise CheckpointError(f"{file}: tensor {name!r} byte range does not match shape {shape} {dtype}")
      if name in self.entries:
        raise CheckpointError(f"{file}: tensor {name!r} also in {self.entries[name][0]}")
      self.entries[name] = (file, dtype, shape, base + start, base + end)

  def keys(self):
    return self.entries.keys()

  def shape(self, name: str) -> tuple[int, ...]:
    return self.entries[name][2]

  def dtype(self, name: str) -> np.dtype:
    return np.dtype(DTYPES[self.entries[name][1]])

  def get(self, name: str) -> np.ndarray:
    file, dtype, shape, start, _ = self.entries[name]
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.memmap(file, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"), mode="r", offset=start,
                    shape=(count,)) if count else np.zeros((0,), DTYPES[dtype])
    return arr.reshape(shape)


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
  """Writes `tensors` to `path` (through a temporary file, so a crash leaves no partial file)."""
  path = Path(path)
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  arrays = {}
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in NAMES:
      raise CheckpointError(f"cannot store {name!r} of dtype {a.dtype} in safetensors")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays[name] = a
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data section
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name in sorted(arrays):
      f.write(arrays[name].tobytes())
  os.replace(tmp, path)
