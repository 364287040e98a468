"""Checks an experiment config (configs/*.py) before any work starts; errors name the key.

`validate` checks the config alone (and, with files=True, that the files it names exist; a run that
fetches first checks them after the fetch stage). `check_against_model` is the cross-stage check run
before the first stage that spends time: the prompts fit the model's positions and the prepared image
size is the model's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_collections

from pgen_jax.errors import ConfigError
from pgen_jax.eval.evaluate import GENERATORS
from pgen_jax.models.attention import IMPLS
from pgen_jax.models.checkpoint import CONFIG_FILE, is_pgen_checkpoint
from pgen_jax.models.config import PARTS, PRESETS, JanusConfig, preset
from pgen_jax.models.llama import REMAT, remat_policy
from pgen_jax.recommenders.build import NAMES
from pgen_jax.rewards import clip, dino
from pgen_jax.rewards.compose import EXTERNAL, HACKABLE, IN_JIT
from pgen_jax.rewards.models import RANDOM, random_preset
from pgen_jax.sampling.prompts import PromptTemplate, max_prompt_len
from pgen_jax.sampling.tokenizers import load_tokenizer
from pgen_jax.scorer.launch import answers
from pgen_jax.train.grpo_rewards import KINDS, SYNTHETIC_ONLY
from pgen_jax.train.hacking import DRIFT

STAGES = ("fetch", "prepare", "vq", "sft", "grpo", "eval", "export")
MODEL_STAGES = ("vq", "sft", "grpo", "eval", "export")  # the stages that load model.checkpoint
DTYPES = ("float32", "bfloat16", "float16")
DATASETS = ("synthetic", "movielens", "pixelrec")


def _get(cfg, dotted: str):
  node = cfg
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"{dotted}: missing from the config")
    node = node[part]
  return node


def _check_finite(node, prefix: str = "") -> None:
  """Every float in the config is finite: nan or inf in a rate, weight or bound is never meant."""
  for key, value in node.items():
    if hasattr(value, "items"):
      _check_finite(value, f"{prefix}{key}.")
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{prefix}{key}: {value!r}; must be a finite number")


def validate(cfg: ml_collections.ConfigDict, *, files: bool = True) -> None:
  """files=False skips the checks that named files exist (the fetch stage is about to download them)."""
  _check_finite(cfg)
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
  cache = _get(cfg, "compile_cache")
  if not isinstance(cache, str) or (cache and Path(cache).expanduser().exists()
                                    and not Path(cache).expanduser().is_dir()):
    raise ConfigError(f"compile_cache: {cache!r} must be a directory path, or \"\" for no cache")

  preset = _get(cfg, "model.preset")
  if preset not in PRESETS:
    raise ConfigError(f"model.preset: {preset!r} unknown; choose one of {sorted(PRESETS)}")
  ckpt = _get(cfg, "model.checkpoint")
  uses_model = any(s in stages for s in MODEL_STAGES)
  if files and uses_model and ckpt and not Path(ckpt).is_dir():
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
  if files and data != "synthetic" and any(s in stages for s in ("prepare", "sft", "grpo", "eval")):
    root = _get(cfg, "data.root")
    if not root or not Path(root).is_dir():
      raise ConfigError(f"data.root: {root!r} is not a directory; put the raw {data} files there")
  for key, low in (("data.history_len", 1), ("data.future_len", 0), ("data.stride", 1), ("data.test_windows", 0),
                   ("data.val_windows", 0), ("data.workers", 0), ("data.image_size", 16)):
    value = _get(cfg, key)
    if not isinstance(value, int) or value < low:
      raise ConfigError(f"{key}: {value!r} must be an integer >= {low}")
  if uses_model and not ckpt and _get(cfg, "data.image_size") != PRESETS[preset]().vision.image_size:
    raise ConfigError(f"data.image_size: {_get(cfg, 'data.image_size')} differs from the {preset} model's "
                      f"image size {PRESETS[preset]().vision.image_size}")
  if _get(cfg, "prompt.uncond") not in ("official", "keep_images"):
    raise ConfigError(f"prompt.uncond: {_get(cfg, 'prompt.uncond')!r}; use 'official' or 'keep_images'")
  if _get(cfg, "prompt.uncond_pads") not in ("drop", "attend"):
    raise ConfigError(f"prompt.uncond_pads: {_get(cfg, 'prompt.uncond_pads')!r}; use 'drop' or 'attend'")
  if _get(cfg, "model.attention") not in IMPLS:
    raise ConfigError(f"model.attention: {_get(cfg, 'model.attention')!r}; use one of {', '.join(IMPLS)}")
  for key in ("sft.remat", "grpo.remat"):
    if remat_policy(_get(cfg, key)) not in REMAT:
      raise ConfigError(f"{key}: {_get(cfg, key)!r}; use one of {', '.join(REMAT)}")
  if "{history}" not in _get(cfg, "prompt.template"):
    raise ConfigError("prompt.template: must contain {history}")
  if "vq" in stages:
    _check_vq(cfg, files)
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
    bad = [p for p in _get(cfg, "sft.trainable") if p not in PARTS]
    if bad or not _get(cfg, "sft.trainable"):
      raise ConfigError(f"sft.trainable: {bad or 'empty'}; choose from {PARTS}")
    if _get(cfg, "sft.pretokenize") and "vqmodel" in _get(cfg, "sft.trainable"):
      raise ConfigError("sft.pretokenize: the targets are tokenized once by the frozen vqmodel, which sft.trainable "
                        "trains; set --config.sft.pretokenize=False")
    for part, scale in dict(_get(cfg, "sft.lr_scales")).items():
      if part not in PARTS:
        raise ConfigError(f"sft.lr_scales.{part}: unknown part; choose from {PARTS}")
      if not (isinstance(scale, (int, float)) and scale > 0):
        raise ConfigError(f"sft.lr_scales.{part}: {scale!r} must be a positive number")
  if "grpo" in stages or "eval" in stages:
    for key, presets in (("grpo.clip", clip.PRESETS), ("grpo.dino", dino.PRESETS)):
      random_preset(_get(cfg, key), presets, key)  # an unknown preset name raises, naming the key
    if files:
      _require_model_files(cfg, ("grpo.clip", "grpo.dino", "grpo.lpips_vgg", "grpo.lpips_heads"))
  if "grpo" in stages:
    _check_grpo(cfg)
  if "eval" in stages:
    for key in ("eval.samples", "eval.per_user", "eval.batch_size"):
      if not isinstance(_get(cfg, key), int) or _get(cfg, key) < 1:
        raise ConfigError(f"{key}: {_get(cfg, key)!r} must be a positive integer")
    if not isinstance(_get(cfg, "eval.windows"), int) or _get(cfg, "eval.windows") < 0:
      raise ConfigError(f"eval.windows: {_get(cfg, 'eval.windows')!r} must be an integer >= 0 (0: no limit)")
    _check_eval(cfg)
  if "export" in stages and not _get(cfg, "export.dir"):
    raise ConfigError("export.dir: empty; set where the HF checkpoint is written")


def _check_eval(cfg) -> None:
  for key, known in (("eval.recommenders", NAMES), ("eval.generators", GENERATORS)):
    bad = [n for n in _get(cfg, key) if n not in known]
    if bad:
      raise ConfigError(f"{key}: {bad} unknown; choose from {known}")
  bad = [t for t in _get(cfg, "eval.scorer_terms") if t not in ("nima", "profile")]
  if bad:
    raise ConfigError(f"eval.scorer_terms: {bad} unknown; choose from ('nima', 'profile')")
  for key in ("eval.clip", "eval.dino"):
    if _get(cfg, key) and not _get(cfg, key).startswith("random:") and not Path(_get(cfg, key)).exists():
      raise ConfigError(f"{key}: {_get(cfg, key)} does not exist; download the model there or clear the key")
  for key, least in (("eval.bootstrap", 1), ("eval.report_users", 0)):
    if not isinstance(_get(cfg, key), int) or _get(cfg, key) < least:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} must be an integer >= {least}")
def _check_vq(cfg, files: bool) -> None:
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
  weight = _get(cfg, "vq.perceptual")
  if not (isinstance(weight, (int, float)) and weight >= 0):
    raise ConfigError(f"vq.perceptual: {weight!r} must be a number >= 0 (0: no perceptual term)")
  if weight and not (_get(cfg, "grpo.lpips_vgg") and _get(cfg, "grpo.lpips_heads")):
    raise ConfigError("vq.perceptual: the LPIPS term needs its weights; set grpo.lpips_vgg (torchvision's "
                      "VGG16 weights, .pth) and grpo.lpips_heads (lpips' weights/v0.1/vgg.pth)")
  if weight and files:
    _require_model_files(cfg, ("grpo.lpips_vgg", "grpo.lpips_heads"))


def _require_model_files(cfg, keys) -> None:
  """Each model file a key names (not a random: preset) exists."""
  for key in keys:
    value = _get(cfg, key)
    if value and not value.startswith(RANDOM) and not Path(value).exists():
      raise ConfigError(f"{key}: {value} does not exist; download the model there or clear the key")


def _check_grpo(cfg) -> None:
  for key in ("grpo.num_steps", "grpo.prompts_per_step", "grpo.inner_updates", "grpo.log_every", "grpo.ckpt_every",
              "grpo.grid_every", "grpo.defence_window", "grpo.defence_patience"):
    if not isinstance(_get(cfg, key), int) or _get(cfg, key) < 1:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} must be a positive integer")
  micro, prompts = _get(cfg, "grpo.micro_batch"), _get(cfg, "grpo.prompts_per_step")
  if not isinstance(micro, int) or micro < 0 or (micro and prompts % micro):
    raise ConfigError(f"grpo.micro_batch: {micro!r} must be 0 (all prompts at once) or divide "
                      f"grpo.prompts_per_step ({prompts})")
  if not isinstance(_get(cfg, "grpo.group_size"), int) or _get(cfg, "grpo.group_size") < 2:
    raise ConfigError(f"grpo.group_size: {_get(cfg, 'grpo.group_size')!r}; group advantages need at least 2 samples")
  for key, choices in (("grpo.reward", KINDS), ("grpo.reward_normalize", ("none", "running")),
                       ("grpo.advantage_scale", ("std", "none")), ("grpo.logprobs", ("cond", "cfg")),
                       ("grpo.defence_response", ("stop", "rollback"))):
    if _get(cfg, key) not in choices:
      raise ConfigError(f"{key}: {_get(cfg, key)!r}; choose one of {choices}")
  if _get(cfg, "grpo.reward") in SYNTHETIC_ONLY and _get(cfg, "data.name") != "synthetic":
    raise ConfigError(f"grpo.reward: {_get(cfg, 'grpo.reward')!r} judges the synthetic world's genres; with "
                      f"data.name={_get(cfg, 'data.name')!r} use models")
  for key in ("grpo.eval_every", "grpo.save_rollouts", "grpo.warmup_steps"):
    if not isinstance(_get(cfg, key), int) or _get(cfg, key) < 0:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} must be an integer >= 0")
  bad = [k for k in _get(cfg, "grpo.defence_drift") if k not in DRIFT]
  if bad:
    raise ConfigError(f"grpo.defence_drift: unknown statistics {bad}; choose from {DRIFT}")
  for key in ("grpo.lr", "grpo.eps_low", "grpo.eps_high", "grpo.temperature", "grpo.advantage_eps",
              "grpo.defence_distance_ratio", "grpo.defence_drift_z"):
    if not _get(cfg, key) > 0:
      raise ConfigError(f"{key}: {_get(cfg, key)!r} must be positive")
  if _get(cfg, "grpo.beta") < 0:
    raise ConfigError("grpo.beta: must be >= 0 (0 skips the reference model)")
  weights = _get(cfg, "grpo.reward_weights")
  bad = [k for k in weights if k not in IN_JIT + EXTERNAL + HACKABLE]
  if bad:
    raise ConfigError(f"grpo.reward_weights: unknown terms {bad}; choose from {IN_JIT + EXTERNAL + HACKABLE}")
  if _get(cfg, "grpo.reward") == "models":
    if not any(weights.values()):
      raise ConfigError("grpo.reward_weights: every weight is 0; give at least one term a weight")
    for term, model in (("clip", "grpo.clip"), ("dino", "grpo.dino")):
      if any(weights[k] for k in weights if k.startswith(term + "_")) and not _get(cfg, model):
        raise ConfigError(f"{model}: empty, but grpo.reward_weights gives {term}_* terms a weight")


def model_config(cfg):
  """The Janus architecture the model stages will load: model.checkpoint's, else the preset's."""
  ckpt = _get(cfg, "model.checkpoint")
  if not ckpt:
    return preset(_get(cfg, "model.preset"))
  if is_pgen_checkpoint(ckpt):
    return JanusConfig.from_dict(json.loads((Path(ckpt) / CONFIG_FILE).read_text())["model"])
  path = Path(ckpt) / "config.json"
  if not path.is_file():
    raise ConfigError(f"model.checkpoint: {path} not found; is {ckpt} a Janus checkpoint directory?")
  try:
    return JanusConfig.from_hf(json.loads(path.read_text()))
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"model.checkpoint: {path} is not a Janus config ({e})") from None


def check_against_model(cfg) -> None:
  """Cross-stage checks, before the first stage spends time: what prepare writes and what the training
  and eval stages build must fit the model they load."""
  stages = tuple(_get(cfg, "stages"))
  if not any(s in stages for s in ("sft", "grpo", "eval")):
    return
  if "grpo" in stages:
    _check_scorer(cfg)
  mc = model_config(cfg)
  if _get(cfg, "data.image_size") != mc.vision.image_size:
    raise ConfigError(f"data.image_size: {_get(cfg, 'data.image_size')} differs from the model's image size "
                      f"{mc.vision.image_size} (model.checkpoint {_get(cfg, 'model.checkpoint') or 'empty'}); set "
                      f"--config.data.image_size={mc.vision.image_size}")
  try:
    tok, _ = load_tokenizer(_get(cfg, "model.tokenizer"), mc, _get(cfg, "model.checkpoint"))
  except (OSError, ValueError) as e:
    raise ConfigError(f"model.tokenizer: cannot load a tokenizer from "
                      f"{_get(cfg, 'model.tokenizer') or _get(cfg, 'model.checkpoint')!r} ({e})") from None
  template = PromptTemplate(prompt=_get(cfg, "prompt.template"), item=_get(cfg, "prompt.item"))
  length = max_prompt_len(tok, _get(cfg, "data.history_len"), mc.num_image_tokens, template,
                          _get(cfg, "prompt.max_text_tokens"))
  if length + mc.num_image_tokens > mc.text.max_position_embeddings:
    raise ConfigError(f"prompt.max_text_tokens / data.history_len: prompts of up to {length} tokens plus "
                      f"{mc.num_image_tokens} image tokens exceed the model's {mc.text.max_position_embeddings} "
                      "positions; shorten the history, the item texts or the template")


def _check_scorer(cfg) -> None:
  """The scorer terms need a scorer answering at grpo.scorer_url, or what the job needs to start one."""
  weights = _get(cfg, "grpo.reward_weights")
  need = [t for t in ("profile", "nima") if _get(cfg, "grpo.reward") == "models" and weights.get(t, 0)]
  if not need:
    return
  url = _get(cfg, "grpo.scorer_url")
  if answers(url):
    return
  if not _get(cfg, "grpo.scorer_start"):
    raise ConfigError(f"grpo.scorer_start: False and nothing answers at grpo.scorer_url {url}, but "
                      f"grpo.reward_weights gives {need} a weight; start the scorer or set grpo.scorer_start=True")
  for term in need:
    key = "grpo.scorer_qwen" if term == "profile" else "grpo.scorer_nima"
    if not _get(cfg, key) or not Path(_get(cfg, key)).exists():
      raise ConfigError(f"{key}: {_get(cfg, key) or 'empty'} is not there, and nothing answers at {url}, "
                        f"but grpo.reward_weights.{term} is {weights[term]}; download it (the fetch stage) "
                        "or start a scorer there")
