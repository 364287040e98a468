"""Fields every experiment config has; the files beside this one set what differs."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stages = ("prepare", "sft", "grpo", "eval", "export")
  c.workdir = "runs/default"
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "janus-pro-1b"      # architecture when no checkpoint is given
  c.model.checkpoint = ""              # HF (transformers or deepseek) or pgen_jax directory
  c.model.dtype = "bfloat16"           # compute
  c.model.param_dtype = "float32"      # master weights

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: all remaining devices

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"            # movielens | pixelrec | synthetic
  c.data.root = ""                     # raw files; synthetic: where the world is generated
  c.data.images = ""                   # posters/covers folder; default root/posters or root/covers
  c.data.store = ""                    # prepared store; default <workdir>/data
  c.data.image_size = 384              # must match the model's image size
  c.data.history_len = 5               # k-1 history items before the target
  c.data.future_len = 3                # p future items used by rewards and metrics
  c.data.stride = 1                    # windows slide by this many items
  c.data.min_rating = 4.0              # positives: rating >= min_rating; 0 keeps every rating
  c.data.test_windows = 1              # per user, the last windows
  c.data.val_windows = 1               # per user, the windows before the test ones
  c.data.workers = 2                   # grain worker processes

  c.export = ml_collections.ConfigDict(dict(dir=""))
  return c
