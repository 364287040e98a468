"""Image checks and preprocessing, against hand-computed geometry and every kind of bad file."""

import numpy as np
import pytest
from PIL import Image

from pgen_jax.data import images
from pgen_jax.errors import DataError


def save(img, path, **kw):
  img.save(path, **kw)
  return path


def test_modes_become_rgb(tmp_path):
  cmyk = save(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), tmp_path / "1.jpg")
  grey = save(Image.new("L", (8, 6), 200), tmp_path / "2.png")
  pal = Image.new("P", (8, 6))
  pal.putpalette([0, 0, 255] * 256)
  pal = save(pal, tmp_path / "3.png")
  rgba = save(Image.new("RGBA", (8, 6), (255, 0, 0, 0)), tmp_path / "4.png")  # fully transparent
  for p, expect in ((cmyk, (255, 0, 0)), (grey, (200, 200, 200)), (pal, (0, 0, 255)), (rgba, (255, 255, 255))):
    img = images.load_rgb(p)
    assert img.mode == "RGB"
    np.testing.assert_allclose(np.asarray(img)[3, 4], expect, atol=3)


def test_bad_files_are_skipped_with_a_reason(tmp_path, monkeypatch):
  good = save(Image.new("RGB", (40, 40), (1, 2, 3)), tmp_path / "1.jpg")
  data = good.read_bytes()
  (tmp_path / "2.jpg").write_bytes(data[: len(data) // 2])            # truncated
  (tmp_path / "3.jpg").write_bytes(b"this is not an image")           # corrupt
  monkeypatch.setattr(images, "MAX_PIXELS", 1000)
  big = save(Image.new("RGB", (100, 100)), tmp_path / "4.png")          # huge for this limit
  for name, reason in (("2.jpg", "corrupt"), ("3.jpg", "corrupt"), ("4.png", "huge"), ("5.png", "missing")):
    with pytest.raises(images.ImageSkip) as e:
      images.load_rgb(tmp_path / name)
    assert e.value.reason == reason and name in str(e.value)
  del big


def test_find_and_empty_folder(tmp_path):
  with pytest.raises(DataError, match="not found"):
    images.find(tmp_path / "nope", [1])
  with pytest.raises(DataError, match="no images"):
    images.find(tmp_path, [1])
  save(Image.new("RGB", (4, 4)), tmp_path / "7.png")
  save(Image.new("RGB", (4, 4)), tmp_path / "8.JPG")
  (tmp_path / "notes.txt").write_text("x")
  assert sorted(images.find(tmp_path, [7, 8, 9])) == [7, 8]


def test_generation_target_is_short_side_resize_then_centre_crop():
  # 30 x 60 portrait: columns carry their x, so the crop's position is readable.
  arr = np.zeros((60, 30, 3), np.uint8)
  arr[:, :, 0] = np.arange(30)[None] * 8
  arr[:, :, 1] = np.arange(60)[:, None] * 4
  out = images.generation_target(Image.fromarray(arr), 15)
  assert out.shape == (15, 15, 3)
  # Scale 1/2 -> 15 x 30, crop rows 7..22: the first row shows original row ~15, the last ~45.
  assert abs(int(out[0, 7, 1]) - 15 * 4) <= 8 and abs(int(out[-1, 7, 1]) - 44 * 4) <= 8
  assert abs(int(out[7, 0, 0]) - 0) <= 10 and abs(int(out[7, -1, 0]) - 29 * 8) <= 14


def test_understanding_input_pads_to_square_with_grey():
  out = images.understanding_input(Image.new("RGB", (40, 20), (255, 0, 0)), 20)
  assert out.shape == (20, 20, 3)
  # 40 x 20 -> 20 x 10 centred vertically: rows 0-4 and 15-19 are padding.
  assert (out[:5] == 127).all() and (out[15:] == 127).all()
  assert (out[5:15] == (255, 0, 0)).all()
