"""Janus-Pro checkpoints: Hugging Face <-> pgen_jax.

  python -m converters.janus to-flax SRC DST [--dtype bfloat16]   # transformers or deepseek layout
  python -m converters.janus to-hf SRC DST                        # our checkpoint -> transformers

Output goes to a temporary sibling directory that is renamed to DST only when complete; on any
error nothing is left at DST and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pgen_jax.errors import CheckpointError
from pgen_jax.models.checkpoint import from_hf_checkpoint, is_pgen_checkpoint, load_janus, save_janus
from pgen_jax.models.hf import HFCheckpoint, export_hf
from pgen_jax.models.sharding import make_mesh


def to_flax(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str | None = None, mesh=None) -> None:
  if Path(dst).exists():
    raise FileExistsError(f"{dst} already exists; choose a new output directory")
  ckpt = HFCheckpoint(src)
  logging.info("%s: %s layout, %d tensors", src, ckpt.layout, len(ckpt.tensors))
  model = from_hf_checkpoint(ckpt, mesh=mesh if mesh is not None else make_mesh(), param_dtype=dtype)
  save_janus(model, dst, hf_files=src if ckpt.layout == "transformers" else None)


def to_hf_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  if not is_pgen_checkpoint(src):
    raise CheckpointError(f"{src}: not a pgen_jax checkpoint (no pgen_config.json)")
  if Path(dst).exists():
    raise FileExistsError(f"{dst} already exists; choose a new output directory")
  export_hf(load_janus(src), dst, side_files=Path(src) / "hf")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m converters.janus", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("to-flax", help="HF (transformers or deepseek layout) -> pgen_jax checkpoint")
  p.add_argument("src")
  p.add_argument("dst")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                 help="parameter dtype (default: the checkpoint's own)")
  p = sub.add_parser("to-hf", help="pgen_jax checkpoint -> transformers JanusForConditionalGeneration")
  p.add_argument("src")
  p.add_argument("dst")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    if args.command == "to-flax":
      to_flax(args.src, args.dst, dtype=args.dtype)
    else:
      to_hf_dir(args.src, args.dst)
  except (CheckpointError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
