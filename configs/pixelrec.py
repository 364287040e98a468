"""Janus-Pro-1B fine-tuned on PixelRec video covers. Bring your own PixelRec copy (not redistributable)."""

from configs.common import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/pixelrec"
  c.model.preset = "janus-pro-1b"
  c.model.checkpoint = "checkpoints/Janus-Pro-1B"
  c.prompt.uncond_pads = "drop"        # the CFG row is BOS + BOI, not thousands of attended pads
  c.data.name = "pixelrec"
  c.data.root = "data/pixelrec"
  c.reward_models.clip = "checkpoints/CLIP-ViT-H-14-laion2B-s32B-b79K"  # open_clip or transformers layout
  c.reward_models.dino = "checkpoints/dinov2-large"
  c.export.dir = "runs/pixelrec/hf"
  return c
