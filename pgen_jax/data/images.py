"""Item images: find, validate and preprocess once.

Generation targets: short side resized to `size`, centre-cropped (what the VQ model encodes).
Understanding inputs: long side resized to `size`, padded to a square with grey 127 (Janus's image
processor), later normalised with mean/std 0.5. Unreadable images are skipped with a reason, never
crash a run: missing, truncated or corrupt, too large (decompression bombs), or unsupported.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pgen_jax.errors import DataError


EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = 40_000_000  # about 6300 x 6300; larger files are skipped as "huge"
PAD_VALUE = 127


class ImageSkip(Exception):
  """An image that cannot be used; `reason` is the counter it goes under."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


def find(folder: str | Path, ids) -> dict[int, Path]:
  """{item id: path} for files named <id>.<ext> in `folder`."""
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(f"{folder}: image folder not found")
  found = {}
  for p in folder.iterdir():
    if p.suffix.lower() in EXTENSIONS and p.stem.isdigit():
      found.setdefault(int(p.stem), p)
  if not found:
    raise DataError(f"{folder}: no images named <item id>{'/'.join(EXTENSIONS)}")
  wanted = set(int(i) for i in ids)
  return {i: p for i, p in found.items() if i in wanted}


def load_rgb(path: Path) -> Image.Image:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(path)
      w, h = img.size
      if w * h > MAX_PIXELS:
        raise ImageSkip("huge", f"{path.name}: {w}x{h} pixels")
      img.load()
  except ImageSkip:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageSkip("huge", f"{path.name}: {e}") from e
  except FileNotFoundError as e:
    raise ImageSkip("missing", f"{path.name}") from e
  except (OSError, SyntaxError, ValueError) as e:  # PIL's truncated/corrupt/unidentified files
    raise ImageSkip("corrupt", f"{path.name}: {e}") from e
  if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    img = Image.alpha_composite(background, rgba)
  return img.convert("RGB")  # CMYK, greyscale, palette, 16-bit all end up 8-bit RGB


def generation_target(img: Image.Image, size: int) -> np.ndarray:
  w, h = img.size
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  img = img.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - size) // 2, (nh - size) // 2
  return np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)


def understanding_input(img: Image.Image, size: int) -> np.ndarray:
  w, h = img.size
  scale = size / max(w, h)
  nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
  img = img.resize((nw, nh), Image.BICUBIC)
  canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
  canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
  return np.asarray(canvas, np.uint8)
