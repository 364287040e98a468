"""Sample grids, what a person looks at to judge a run: one row per history, its images | the
generated samples | the ground truth, as a PNG and in TensorBoard. Used by SFT, GRPO and eval."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pgen_jax.fileio import write_bytes


def png_bytes(image: np.ndarray) -> bytes:
  """A uint8 (H, W, 3) image encoded as PNG."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def save_grid(history, generated, target, out: Path, step: int, writer) -> None:
  """Writes out/grids/step_N.png and a TensorBoard image: one row per example, its history strip |
  its generated samples | the ground truth. history (R, k, s, s, 3), generated (R * n, s, s, 3),
  target (R, s, s, 3), all uint8."""
  rows, k, s = history.shape[:3]
  n = len(generated) // rows
  grid = np.full((rows * s, (k + n + 1) * s + 2 * 4, 3), 255, np.uint8)
  for r in range(rows):
    tiles = [history[r, j] for j in range(k)] + [None] + list(generated[r * n:(r + 1) * n]) + [None] + [target[r]]
    x = 0
    for t in tiles:
      if t is None:
        x += 4
        continue
      grid[r * s:(r + 1) * s, x:x + s] = t
      x += s
  (out / "grids").mkdir(exist_ok=True)
  write_bytes(out / "grids" / f"step_{step:07d}.png", png_bytes(grid))
  writer.write_images(step, {"samples": grid[None]})
