"""How much of a CPU compile's temporaries are f32 copies of bf16 operands, which a GPU or TPU would not make.

XLA's CPU backend runs a bf16 dot in f32: it converts both operands first. For a model whose weights are
bf16 (or cast to bf16 for compute) those converts are f32 copies of the weights, and in a loop XLA hoists
them, so the whole language model in f32 stays live: measured on Janus-Pro-7B (bf16), 26.2 of the 27.1 GB
of temporaries of one decode step. An AOT figure taken on CPU therefore overstates an accelerator's need
by up to that much. This reads XLA's buffer assignment (dumped by --xla_dump_to) of the newest compile and
measures the span, within the temporaries' allocation, of f32 values made by `convert` ops: the figure to
subtract for an estimate of the peak on a backend with bf16 dots.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

MIN_BYTES = 1 << 20  # activations' converts are counted too where large; small ones are noise


def enable_dump(environ=os.environ) -> Path | None:
  """Before JAX starts: makes XLA dump what its compiles assign (a fresh temporary directory), unless the
  caller already dumps somewhere. Returns the directory, or None."""
  if "--xla_dump_to" in environ.get("XLA_FLAGS", ""):
    return None
  path = Path(tempfile.mkdtemp(prefix="pgen_xla_dump_"))
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} --xla_dump_to={path}".strip()
  return path


def upcast_bytes(assignment: str, min_bytes: int = MIN_BYTES) -> int:
  """Bytes of the temporaries' allocation (the largest preallocated-temp) covered by f32 values that
  `convert` ops made, each at least min_bytes; overlapping values (reused space) are counted once."""
  blocks = re.split(r"\n(?=allocation \d+:)", assignment)
  temps = [b for b in blocks if b.startswith("allocation") and "preallocated-temp" in b.split("\n", 1)[0]]
  if not temps:
    return 0
  size = lambda b: int(re.match(r"allocation \d+: size (\d+)", b).group(1))
  spans = sorted((int(m.group(3)), int(m.group(3)) + int(m.group(2)))
                 for m in re.finditer(r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=(\d+)\): f32\[",
                                      max(temps, key=size))
                 if "convert" in m.group(1) and int(m.group(2)) >= min_bytes)
  total, start, end = 0, None, None
  for a, b in spans:
    if start is None or a > end:
      total += 0 if start is None else end - start
      start, end = a, b
    else:
      end = max(end, b)
  return total + (0 if start is None else end - start)


def newest(dump: Path) -> int | None:
  """upcast_bytes of the newest CPU compile in `dump` (None if none), whose dump is then removed."""
  files = sorted(dump.glob("*cpu_after_optimizations-buffer-assignment.txt"), key=lambda p: p.stat().st_mtime)
  if not files:
    return None
  out = upcast_bytes(files[-1].read_text())
  for p in dump.iterdir():  # keep the directory small: a 7B program's dump is tens of MB
    p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)
  return out
