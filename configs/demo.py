"""The embedded default: a tiny Janus on the synthetic MovieLens-like world, CPU, nothing downloaded.

  python -m pgen_jax.main --config=configs/demo.py
"""

from configs.common import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/demo"
  c.model.preset = "tiny"
  c.model.dtype = "float32"
  c.data.name = "synthetic"
  c.data.root = "runs/demo/world"
  c.data.image_size = 16               # the tiny model's image size
  c.data.history_len = 3
  c.export.dir = "runs/demo/hf"
  return c
