"""Reward time: the in-jit CLIP + DINO terms of one GRPO step's rollouts, bf16, on the devices at hand.

  python -m pgen_jax.bench.rewards --per_sample        # 8 prompts x 8 samples, ViT-H-14 + DINOv2-L, 384px
  python -m pgen_jax.bench.rewards --repeats=0          # the encodes per call alone (nothing runs: any machine)
  python -m pgen_jax.bench.rewards --size=64 --clip=tiny --dino=tiny   # a CPU smoke run

Random weights of the real shapes. Each prompt brings --history history images, a target and --future
future images; its --samples generated images share them (references encoded once per prompt, as the
GRPO rewards do). Default terms: CLIP similarity to the history mean, the target and the future, DINO to
the target. Prints the images each encoder is given per call, counted from the shapes its calls receive
while the function is traced (references = those rows minus the generated images), and the time of a
call; --per_sample also times the references repeated for each sample (how the rewards encoded them
before). --json appends the same as one JSON line. Goal: rewards at most 10% of a GRPO step.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from pgen_jax.models import make_mesh, place_on_mesh
from pgen_jax.rewards.clip import CLIP, PRESETS as CLIP_PRESETS
from pgen_jax.rewards.compose import IN_JIT, RewardConfig, in_jit_terms
from pgen_jax.rewards.dino import PRESETS as DINO_PRESETS, Dino

_PROMPTS = flags.DEFINE_integer("prompts", 8, "prompts per call (B)")
_SAMPLES = flags.DEFINE_integer("samples", 8, "generated images per prompt (G)")
_HISTORY = flags.DEFINE_integer("history", 5, "history images per prompt")
_FUTURE = flags.DEFINE_integer("future", 3, "future images per prompt")
_SIZE = flags.DEFINE_integer("size", 384, "image size")
_CLIP = flags.DEFINE_enum("clip", "vit-h-14", list(CLIP_PRESETS), "CLIP shape")
_DINO = flags.DEFINE_enum("dino", "dinov2-large", list(DINO_PRESETS), "DINO shape")
_TERMS = flags.DEFINE_list("terms", ["clip_history", "clip_target", "clip_future", "dino_target"],
                           "in-jit reward terms (CLIP/DINO ones)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls (0: count the encodes only)")
_PER_SAMPLE = flags.DEFINE_bool("per_sample", False, "also time the references repeated for each sample")
_JSON = flags.DEFINE_string("json", "", "append the figures as one JSON line to this file")


IMAGE_TERMS = tuple(t for t in IN_JIT if t.startswith(("clip_", "dino_")) and t != "clip_text")


class _Rows:
  """Stands in for an encoder while in_jit_terms is traced: records the images each call is given."""

  def __init__(self, module):
    self.module, self.rows = module, []

  def __call__(self, x):
    self.rows.append(int(x.shape[0]))
    return self.module(x)

  def get_image_features(self, x):
    self.rows.append(int(x.shape[0]))
    return self.module.get_image_features(x)


def encodes(cfg, clip, dino, data) -> dict:
  """{"clip"|"dino": {"calls": [rows of each call], "generated", "references"}} for the encoders used."""
  counted = {"clip": _Rows(clip), "dino": _Rows(dino)}
  jax.eval_shape(lambda d: in_jit_terms(cfg, d["generated"], history=d["history"], target=d["target"],
                                        future=d["future"], clip=counted["clip"], dino=counted["dino"]), data)
  n = data["generated"].shape[0]
  return {k: {"calls": c.rows, "generated": n, "references": sum(c.rows) - n} for k, c in counted.items() if c.rows}


def time_call(fn, *args) -> float | None:
  """Seconds per call after one untimed call; None with --repeats=0 (the counts alone: nothing runs)."""
  if not _REPEATS.value:
    return None
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(_REPEATS.value):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / _REPEATS.value


def ms(seconds):
  return None if seconds is None else 1e3 * seconds


def describe(enc: dict) -> str:
  return ", ".join(f"{k.upper()} {e['generated']} generated + {e['references']} references" for k, e in enc.items())


def main(argv):
  del argv
  bad = [t for t in _TERMS.value if t not in IMAGE_TERMS]
  if bad:
    raise app.UsageError(f"--terms: {bad} are not CLIP/DINO image terms; choose from {', '.join(IMAGE_TERMS)}")
  mesh = make_mesh()
  ccfg, dcfg = CLIP_PRESETS[_CLIP.value], DINO_PRESETS[_DINO.value]
  clip = place_on_mesh(CLIP(ccfg, nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), mesh)
  dino = place_on_mesh(Dino(dcfg, nnx.Rngs(1), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), mesh)
  cfg = RewardConfig(weights=tuple((t, 1.0) for t in _TERMS.value), clip_size=ccfg.vision.image_size,
                     dino_resize=dcfg.image_size, dino_crop=dcfg.image_size)
  b, g, s = _PROMPTS.value, _SAMPLES.value, _SIZE.value
  rng = np.random.default_rng(0)
  shapes = {"generated": (b * g, s, s, 3), "history": (b, _HISTORY.value, s, s, 3), "target": (b, s, s, 3),
            "future": (b, _FUTURE.value, s, s, 3)}
  data = {k: jnp.asarray(rng.integers(0, 256, v), jnp.uint8) for k, v in shapes.items()}

  @nnx.jit
  def rewards(clip, dino, d):
    return in_jit_terms(cfg, d["generated"], history=d["history"], target=d["target"], future=d["future"],
                        clip=clip, dino=dino)

  row = {"device": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "clip": _CLIP.value, "dino": _DINO.value,
         "terms": list(_TERMS.value), "prompts": b, "samples": g, "history": _HISTORY.value, "future": _FUTURE.value,
         "size": s, "encodes": encodes(cfg, clip, dino, data), "ms_per_call": ms(time_call(rewards, clip, dino, data))}
  print(f"{row['device']}; CLIP {_CLIP.value} + DINO {_DINO.value} bf16; {b} prompts x {g} samples at {s}px, "
        f"{_HISTORY.value} history + 1 target + {_FUTURE.value} future images per prompt")
  print(f"images encoded per call: {describe(row['encodes'])}")
  if row["ms_per_call"] is not None:
    print(f"{row['ms_per_call']:.1f} ms per call")
  if _PER_SAMPLE.value:  # today's references, before: each prompt's repeated for its G samples
    each = {k: v if k == "generated" else jnp.repeat(v, g, 0) for k, v in data.items()}
    row["per_sample_encodes"] = encodes(cfg, clip, dino, each)
    row["per_sample_ms_per_call"] = ms(time_call(rewards, clip, dino, each))
    timed = "" if row["per_sample_ms_per_call"] is None else f"; {row['per_sample_ms_per_call']:.1f} ms per call"
    print(f"references repeated per sample: {describe(row['per_sample_encodes'])}{timed}")
  if _JSON.value:
    with open(_JSON.value, "a") as f:
      f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  app.run(main)
