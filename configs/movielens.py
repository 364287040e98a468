"""Janus-Pro-1B fine-tuned on MovieLens posters (the paper's main setting).

The fetch stage downloads what is missing: Janus-Pro-1B (transformers layout) to checkpoints/Janus-Pro-1B,
CLIP ViT-H-14 and DINOv2-large, the MovieLens release data.version to data/movielens, and posters from TMDB
($TMDB_API_KEY) or from the folder fetch.posters names. Or put them there yourself, or override:
  python -m pgen_jax.main --config=configs/movielens.py \
      --config.model.checkpoint=/path/Janus-Pro-1B --config.data.root=/path/ml-latest-small
"""

from configs.common import base_config


def get_config():
  c = base_config()
  c.stages = ("fetch", "prepare", "sft", "grpo", "eval", "export")
  c.workdir = "runs/movielens"
  c.model.preset = "janus-pro-1b"
  c.model.checkpoint = "checkpoints/Janus-Pro-1B"
  c.data.name = "movielens"
  c.data.root = "data/movielens"
  c.data.version = "ml-latest-small"
  # Memory at the paper's shape (docs/benchmarks.md, pgen_jax.bench.memory): batch 64 as 4 slices
  # of 16 with decoder layers recomputed; GRPO updates one history (8 samples) at a time.
  c.prompt.uncond_pads = "drop"        # the CFG row is BOS + BOI, not 3,000 attended pads
  c.sft.remat = "full"
  c.sft.grad_accum = 4
  c.grpo.remat = "full"
  c.grpo.micro_batch = 1
  c.reward_models.clip = "checkpoints/CLIP-ViT-H-14-laion2B-s32B-b79K"  # open_clip or transformers layout
  c.reward_models.dino = "checkpoints/dinov2-large"
  c.reward_models.scorer_nima = "checkpoints/NIMA_InceptionV2_ava.pth"
  c.reward_models.scorer_qwen = "checkpoints/Qwen2.5-VL-7B-Instruct"
  c.export.dir = "runs/movielens/hf"
  return c
