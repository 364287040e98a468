"""How much of a CPU compile's temporaries are f32 copies of bf16 operands, which a GPU or TPU would not make.

XLA's CPU backend runs a bf16 dot in f32: it converts both operands first. For a model whose weights are
bf16 (or cast to bf16 for compute) those converts are f32 copies of the weights, and in a loop XLA hoists
them, so the whole language model in f32 stays live: measured on Janus-Pro-7B (bf16), 26.2 of the 27.1 GB
of temporaries of one decode step. An AOT figure taken on CPU therefore overstates an accelerator's need
by up to that much. This reads XLA's buffer assignment (dumped by --xla_dump_to) of the newest compile and
measures the span, within the temporaries' allocation, of the f32 values made from bf16 arguments alone (a
weight stored in bf16, read in f32): the figure to subtract for an estimate of the peak on a backend with
bf16 dots. Conservative: f32 copies of what the program computes (fp32 masters cast to bf16 then widened,
a quantised base dequantised, activations) are not counted, although an accelerator would need only part
of them.
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
  # On a GPU or TPU host the figures need no correction, and dumping every compile costs time and disk.
  platforms = environ.get("JAX_PLATFORMS", "")
  accelerator = Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("accel*"))
  if (platforms and platforms != "cpu") or (not platforms and accelerator):
    return None
  path = Path(tempfile.mkdtemp(prefix="pgen_xla_dump_"))
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} --xla_dump_to={path}".strip()
  return path


_DEF = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[[^\n]*?\s(?:fusion|convert)\(([^)]*)\)", re.M)
_PARAM = re.compile(r"^\s*%(\S+) = (\w+)\[[^\n]*?\sparameter\(\d+\)", re.M)


def copied_arguments(hlo: str) -> set[str]:
  """Names of the f32 values the optimised HLO module makes by one fusion or convert of bf16 arguments of
  the program alone (a weight read in f32): what a backend with bf16 dots would read in place."""
  entry = hlo[hlo.index("\nENTRY "):]
  bf16_args = {m.group(1) for m in _PARAM.finditer(entry) if m.group(2) == "bf16"}
  out = set()
  for m in _DEF.finditer(hlo):
    operands = [o.strip().lstrip("%") for o in m.group(3).split(",") if o.strip()]
    if m.group(2) == "f32" and operands and all(o in bf16_args for o in operands):
      out.add(m.group(1))
  return out


def upcast_bytes(assignment: str, copies: set[str] | None = None, min_bytes: int = MIN_BYTES) -> int:
  """Bytes of the temporaries' allocation (the largest preallocated-temp) covered by f32 values that
  `convert` ops made (with `copies`, copied_arguments' names: those alone), each at least min_bytes;
  overlapping values (reused space) are counted once."""
  blocks = re.split(r"\n(?=allocation \d+:)", assignment)
  temps = [b for b in blocks if b.startswith("allocation") and "preallocated-temp" in b.split("\n", 1)[0]]
  if not temps:
    return 0
  size = lambda b: int(re.match(r"allocation \d+: size (\d+)", b).group(1))
  spans = sorted((int(m.group(3)), int(m.group(3)) + int(m.group(2)))
                 for m in re.finditer(r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=(\d+)\): f32\[",
                                      max(temps, key=size))
                 if (m.group(1) in copies if copies is not None else "convert" in m.group(1))
                 and int(m.group(2)) >= min_bytes)
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
  hlo = Path(str(files[-1]).replace("-buffer-assignment.txt", ".txt"))
  out = upcast_bytes(files[-1].read_text(), copied_arguments(hlo.read_text()))
  for p in dump.iterdir():  # keep the directory small: a 7B program's dump is tens of MB
    p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)
  return out
