"""Checks an experiment config (configs/*.py) before any work starts; errors name the key."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from pgen_jax.models.config import PRESETS, ConfigError

STAGES = ("prepare", "vq", "sft", "grpo", "eval", "export")
DTYPES = ("float32", "bfloat16", "float16")
DATASETS = ("synthetic", "movielens", "pixelrec")


def _get(cfg, dotted: str):
  node = cfg
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"{dotted}: missing from the config")
    node = node[part]
  return node


def validate(cfg: ml_collections.ConfigDict) -> None:
  stages = tuple(_get(cfg, "stages"))
  if not stages:
    raise ConfigError("stages: empty; name at least one of " + ", ".join(STAGES))
  for s in stages:
    if s not in STAGES:
      raise ConfigError(f"stages: unknown stage {s!r}; known: {', '.join(STAGES)}")
  if not str(_get(cfg, "workdir")):
    raise ConfigError("workdir: empty; set where runs write checkpoints and logs")
  if not isinstance(_get(cfg, "seed"), int):
    raise ConfigError("seed: must be an integer")

  preset = _get(cfg, "model.preset")
  if preset not in PRESETS:
    raise ConfigError(f"model.preset: {preset!r} unknown; choose one of {sorted(PRESETS)}")
  ckpt = _get(cfg, "model.checkpoint")
  if ckpt and not Path(ckpt).is_dir():
    raise ConfigError(f"model.checkpoint: {ckpt} is not a directory. Download Janus-Pro "
                      "(HF layout) there, or point it at a pgen_jax checkpoint")
  for key in ("model.dtype", "model.param_dtype"):
    if _get(cfg, key) not in DTYPES:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} unsupported; choose one of {DTYPES}")

  axes = {a: _get(cfg, f"mesh.{a}") for a in ("data", "fsdp", "tensor")}
  for a, n in axes.items():
    if not isinstance(n, int) or (n < 1 and n != -1):
      raise ConfigError(f"mesh.{a}: {n!r}; use a positive device count or -1 for 'the rest'")
  if list(axes.values()).count(-1) > 1:
    raise ConfigError("mesh: at most one axis may be -1")

  data = _get(cfg, "data.name")
  if data not in DATASETS:
    raise ConfigError(f"data.name: {data!r} unknown; choose one of {DATASETS}")
  if data == "synthetic" and not _get(cfg, "data.root"):
    raise ConfigError("data.root: empty; set where the synthetic world is written")
  if data != "synthetic" and any(s in stages for s in ("prepare", "sft", "grpo", "eval")):
    root = _get(cfg, "data.root")
    if not root or not Path(root).is_dir():
      raise ConfigError(f"data.root: {root!r} is not a directory; put the raw {data} files there")
  for key, low in (("data.history_len", 1), ("data.future_len", 0), ("data.stride", 1), ("data.test_windows", 0),
                   ("data.val_windows", 0), ("data.workers", 0), ("data.image_size", 16)):
    value = _get(cfg, key)
    if not isinstance(value, int) or value < low:
      raise ConfigError(f"{key}: {value!r} must be an integer >= {low}")
  if not ckpt and _get(cfg, "data.image_size") != PRESETS[preset]().vision.image_size:
    raise ConfigError(f"data.image_size: {_get(cfg, 'data.image_size')} differs from the {preset} model's "
                      f"image size {PRESETS[preset]().vision.image_size}")
  if _get(cfg, "prompt.uncond") not in ("official", "keep_images"):
    raise ConfigError(f"prompt.uncond: {_get(cfg, 'prompt.uncond')!r}; use 'official' or 'keep_images'")
  if "{history}" not in _get(cfg, "prompt.template"):
    raise ConfigError("prompt.template: must contain {history}")
  if "vq" in stages:
    _check_vq(cfg)
  if "sft" in stages:
    for key in ("sft.batch_size", "sft.grad_accum", "sft.log_every", "sft.eval_every", "sft.ckpt_every",
                "sft.eval_batches", "sft.eval_batch_size", "sft.keep", "sft.max_bad_steps", "sft.grid_samples"):
      if not isinstance(_get(cfg, key), int) or _get(cfg, key) < 1:
        raise ConfigError(f"{key}: {_get(cfg, key)!r} must be a positive integer")
    if _get(cfg, "sft.batch_size") % _get(cfg, "sft.grad_accum"):
      raise ConfigError(f"sft.batch_size: {_get(cfg, 'sft.batch_size')} is not a multiple of sft.grad_accum")
    if not _get(cfg, "sft.lr") > 0:
      raise ConfigError("sft.lr: must be positive")
    if not 0 <= _get(cfg, "sft.uncond_prob") < 1:
      raise ConfigError("sft.uncond_prob: must be in [0, 1)")
    known = ("vision_model", "aligner", "vqmodel", "generation_embeddings", "generation_aligner",
             "generation_head", "language_model", "lm_head")
    bad = [p for p in _get(cfg, "sft.trainable") if p not in known]
    if bad or not _get(cfg, "sft.trainable"):
      raise ConfigError(f"sft.trainable: {bad or 'empty'}; choose from {known}")
  if "grpo" in stages or "eval" in stages:
    from pgen_jax.rewards import clip, dino
    from pgen_jax.rewards.models import RANDOM, random_preset
    for key, presets in (("grpo.clip", clip.PRESETS), ("grpo.dino", dino.PRESETS)):
      random_preset(_get(cfg, key), presets, key)  # an unknown preset name raises, naming the key
    for model in ("grpo.clip", "grpo.dino", "grpo.lpips_vgg", "grpo.lpips_heads"):
      if _get(cfg, model) and not _get(cfg, model).startswith(RANDOM) and not Path(_get(cfg, model)).exists():
        raise ConfigError(f"{model}: {_get(cfg, model)} does not exist; download the model there or clear the key")
  if "grpo" in stages:
    _check_grpo(cfg)
  if "eval" in stages:
    for key in ("eval.samples", "eval.per_user", "eval.batch_size"):
      if not isinstance(_get(cfg, key), int) or _get(cfg, key) < 1:
        raise ConfigError(f"{key}: {_get(cfg, key)!r} must be a positive integer")
    if not isinstance(_get(cfg, "eval.windows"), int) or _get(cfg, "eval.windows") < 0:
      raise ConfigError(f"eval.windows: {_get(cfg, 'eval.windows')!r} must be an integer >= 0 (0: no limit)")
  if "export" in stages and not _get(cfg, "export.dir"):
    raise ConfigError("export.dir: empty; set where the HF checkpoint is written")


def _check_vq(cfg) -> None:
  for key in ("vq.num_steps", "vq.batch_size", "vq.restart_every", "vq.holdout_every", "vq.log_every",
              "vq.ckpt_every", "vq.keep"):
    if not isinstance(_get(cfg, key), int) or _get(cfg, key) < 1:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} must be a positive integer")
  patch = PRESETS[_get(cfg, "model.preset")]().vision.patch_size
  crop = _get(cfg, "vq.crop")
  if not isinstance(crop, int) or crop < 0 or crop % patch or crop > _get(cfg, "data.image_size"):
    raise ConfigError(f"vq.crop: {crop!r}; use 0 (whole images) or a multiple of the patch size {patch} "
                      f"up to data.image_size")
  for key in ("vq.lr", "vq.clip"):
    if not _get(cfg, key) > 0:
      raise ConfigError(f"{key}: must be positive")


def _check_grpo(cfg) -> None:
  from pgen_jax.rewards.compose import EXTERNAL, IN_JIT
  for key in ("grpo.num_steps", "grpo.prompts_per_step", "grpo.inner_updates", "grpo.log_every", "grpo.ckpt_every",
              "grpo.grid_every", "grpo.defence_window", "grpo.defence_patience"):
    if not isinstance(_get(cfg, key), int) or _get(cfg, key) < 1:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} must be a positive integer")
  if not isinstance(_get(cfg, "grpo.group_size"), int) or _get(cfg, "grpo.group_size") < 2:
    raise ConfigError(f"grpo.group_size: {_get(cfg, 'grpo.group_size')!r}; group advantages need at least 2 samples")
  for key, choices in (("grpo.reward", ("models", "genre", "fixed")), ("grpo.aggregation", ("token", "sequence")),
                       ("grpo.advantage_scale", ("std", "none")), ("grpo.logprobs", ("cond", "cfg")),
                       ("grpo.defence_response", ("stop", "rollback"))):
    if _get(cfg, key) not in choices:
      raise ConfigError(f"{key}: {_get(cfg, key)!r}; choose one of {choices}")
  for key in ("grpo.lr", "grpo.eps_low", "grpo.eps_high", "grpo.temperature"):
    if not _get(cfg, key) > 0:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} must be positive")
  if _get(cfg, "grpo.beta") < 0:
    raise ConfigError("grpo.beta: must be >= 0 (0 skips the reference model)")
  weights = _get(cfg, "grpo.reward_weights")
  bad = [k for k in weights if k not in IN_JIT + EXTERNAL]
  if bad:
    raise ConfigError(f"grpo.reward_weights: unknown terms {bad}; choose from {IN_JIT + EXTERNAL}")
  if _get(cfg, "grpo.reward") == "models":
    if not any(weights.values()):
      raise ConfigError("grpo.reward_weights: every weight is 0; give at least one term a weight")
    for term, model in (("clip", "grpo.clip"), ("dino", "grpo.dino")):
      if any(weights[k] for k in weights if k.startswith(term + "_")) and not _get(cfg, model):
        raise ConfigError(f"{model}: empty, but grpo.reward_weights gives {term}_* terms a weight")

