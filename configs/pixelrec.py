"""Janus-Pro-1B fine-tuned on PixelRec video covers. Bring your own PixelRec copy (not redistributable)."""

from configs.common import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/pixelrec"
  c.model.preset = "janus-pro-1b"
  c.model.checkpoint = "checkpoints/Janus-Pro-1B"
  c.data.name = "pixelrec"
  c.data.root = "data/pixelrec"
  c.export.dir = "runs/pixelrec/hf"
  return c
