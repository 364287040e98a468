"""Reward time: in-jit CLIP + DINO terms for N generated images, bf16, on the devices at hand.

  python -m pgen_jax.bench.rewards --images=64 --size=384                       # ViT-H-14 + DINOv2-L shapes
  python -m pgen_jax.bench.rewards --images=8 --size=64 --clip=tiny --dino=tiny   # a CPU smoke run

Random weights of the real shapes; terms: CLIP similarity to the history mean (5 images), to the
target and the future (3), DINO to the target. Goal: at most 10% of a GRPO step.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from pgen_jax.models import make_mesh, place_on_mesh
from pgen_jax.rewards.clip import CLIP, PRESETS as CLIP_PRESETS
from pgen_jax.rewards.compose import RewardConfig, in_jit_terms
from pgen_jax.rewards.dino import PRESETS as DINO_PRESETS, Dino

_IMAGES = flags.DEFINE_integer("images", 64, "generated images per call")
_SIZE = flags.DEFINE_integer("size", 384, "generated image size")
_CLIP = flags.DEFINE_enum("clip", "vit-h-14", list(CLIP_PRESETS), "CLIP shape")
_DINO = flags.DEFINE_enum("dino", "dinov2-large", list(DINO_PRESETS), "DINO shape")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls")


def main(argv):
  del argv
  mesh = make_mesh()
  ccfg, dcfg = CLIP_PRESETS[_CLIP.value], DINO_PRESETS[_DINO.value]
  clip = place_on_mesh(CLIP(ccfg, nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), mesh)
  dino = place_on_mesh(Dino(dcfg, nnx.Rngs(1), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), mesh)
  cfg = RewardConfig(weights=(("clip_history", 1.0), ("clip_target", 1.0), ("clip_future", 1.0), ("dino_target", 1.0)),
                     clip_size=ccfg.vision.image_size, dino_resize=dcfg.image_size, dino_crop=dcfg.image_size)
  n, s = _IMAGES.value, _SIZE.value
  rng = np.random.default_rng(0)
  data = {"generated": rng.integers(0, 256, (n, s, s, 3)), "history": rng.integers(0, 256, (n, 5, s, s, 3)),
          "target": rng.integers(0, 256, (n, s, s, 3)), "future": rng.integers(0, 256, (n, 3, s, s, 3))}
  data = {k: jnp.asarray(v, jnp.uint8) for k, v in data.items()}

  @nnx.jit
  def rewards(clip, dino, d):
    return in_jit_terms(cfg, d["generated"], history=d["history"], target=d["target"], future=d["future"],
                        clip=clip, dino=dino)

  jax.block_until_ready(rewards(clip, dino, data))
  t0 = time.perf_counter()
  for _ in range(_REPEATS.value):
    jax.block_until_ready(rewards(clip, dino, data))
  dt = (time.perf_counter() - t0) / _REPEATS.value
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; CLIP {_CLIP.value} + DINO {_DINO.value} bf16; "
        f"{n} images at {s}px (+{n * 9} history/target/future images): {dt * 1e3:.1f} ms per call")


if __name__ == "__main__":
  app.run(main)
