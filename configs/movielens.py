"""Janus-Pro-1B fine-tuned on MovieLens posters (the paper's main setting).

Put the Janus-Pro-1B checkpoint (transformers layout, e.g. deepseek-community/Janus-Pro-1B, or the
original deepseek-ai/Janus-Pro-1B) in checkpoints/Janus-Pro-1B, and the raw MovieLens files
(ml-1m, ml-latest-small, ml-25m or ml-32m) plus a posters/ folder in data/movielens, or override:
  python -m pgen_jax.main --config=configs/movielens.py \
      --config.model.checkpoint=/path/Janus-Pro-1B --config.data.root=/path/ml-latest-small
"""

from configs.common import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/movielens"
  c.model.preset = "janus-pro-1b"
  c.model.checkpoint = "checkpoints/Janus-Pro-1B"
  c.data.name = "movielens"
  c.data.root = "data/movielens"
  c.grpo.clip = "checkpoints/CLIP-ViT-H-14-laion2B-s32B-b79K"  # open_clip or transformers layout
  c.grpo.dino = "checkpoints/dinov2-large"
  c.export.dir = "runs/movielens/hf"
  return c
