"""The checks across config sections, and of the files the config names, before any work starts.

Each section checks itself as it is made (pgen_jax.settings); what is left here needs several sections or
the disk. `validate` runs first (with files=False when the fetch stage is about to download the files);
`check_against_model` runs before the first stage that spends time: the prompts fit the model's
positions and the prepared image size is the model's.
"""

from __future__ import annotations

from pathlib import Path

from pgen_jax.errors import ConfigError
from pgen_jax.models.config import PRESETS
from pgen_jax.rewards.models import RANDOM
from pgen_jax.sampling.prompts import PromptTemplate, max_prompt_len
from pgen_jax.sampling.tokenizers import load_tokenizer
from pgen_jax.scorer.launch import answers
from pgen_jax.settings import Settings
from pgen_jax.setup import model_config
from pgen_jax.train.grpo_rewards import SYNTHETIC_ONLY

MODEL_STAGES = ("vq", "sft", "grpo", "eval", "export")  # the stages that load model.checkpoint


def validate(s: Settings, *, files: bool = True) -> None:
  """files=False skips the checks that named files exist (the fetch stage is about to download them)."""
  cache = Path(s.compile_cache).expanduser()
  if s.compile_cache and cache.exists() and not cache.is_dir():
    raise ConfigError(f"compile_cache: {s.compile_cache!r} must be a directory path, or \"\" for no cache")
  uses_model = any(stage in s.stages for stage in MODEL_STAGES)
  ckpt = s.model.checkpoint
  if files and uses_model and ckpt and not Path(ckpt).is_dir():
    raise ConfigError(f"model.checkpoint: {ckpt} is not a directory. Download Janus-Pro "
                      "(HF layout) there, or point it at a pgen_jax checkpoint")
  if files and s.data.name != "synthetic" and any(stage in s.stages for stage in ("prepare", "sft", "grpo", "eval")):
    if not s.data.root or not Path(s.data.root).is_dir():
      raise ConfigError(f"data.root: {s.data.root!r} is not a directory; put the raw {s.data.name} files there")
  size = PRESETS[s.model.preset]().vision.image_size
  if uses_model and not ckpt and s.data.image_size != size:
    raise ConfigError(f"data.image_size: {s.data.image_size} differs from the {s.model.preset} model's image size "
                      f"{size}")
  if "vq" in s.stages:
    _check_vq(s, files)
  r = s.reward_models
  if "grpo" in s.stages and s.grpo.reward == "models":
    for term in ("clip", "dino"):
      if any(w for k, w in s.grpo.reward_weights.items() if k.startswith(term + "_")) and not getattr(r, term):
        raise ConfigError(f"{r.key(term)}: empty, but grpo.reward_weights gives {term}_* terms a weight")
  if files and ("grpo" in s.stages or "eval" in s.stages):
    _require_files({r.key(k): getattr(r, k) for k in ("clip", "dino", "lpips_vgg", "lpips_heads")})
  if "grpo" in s.stages and s.grpo.reward in SYNTHETIC_ONLY and s.data.name != "synthetic":
    raise ConfigError(f"grpo.reward: {s.grpo.reward!r} judges the synthetic world's genres; with "
                      f"data.name={s.data.name!r} use models")
  if "eval" in s.stages:
    _require_files({"eval.clip": s.eval.clip, "eval.dino": s.eval.dino})


def _check_vq(s: Settings, files: bool) -> None:
  patch = PRESETS[s.model.preset]().vision.patch_size
  if s.vq.crop % patch or s.vq.crop > s.data.image_size:
    raise ConfigError(f"vq.crop: {s.vq.crop!r}; use 0 (whole images) or a multiple of the patch size {patch} "
                      f"up to data.image_size")
  r = s.reward_models
  if s.vq.perceptual and not (r.lpips_vgg and r.lpips_heads):
    raise ConfigError("vq.perceptual: the LPIPS term needs its weights; set reward_models.lpips_vgg (torchvision's "
                      "VGG16 weights, .pth) and reward_models.lpips_heads (lpips' weights/v0.1/vgg.pth)")
  if s.vq.perceptual and files:
    _require_files({r.key(k): getattr(r, k) for k in ("lpips_vgg", "lpips_heads")})


def _require_files(paths: dict[str, str]) -> None:
  """Each model file a key names (not a random: preset) exists."""
  for key, value in paths.items():
    if value and not value.startswith(RANDOM) and not Path(value).exists():
      raise ConfigError(f"{key}: {value} does not exist; download the model there or clear the key")


def check_against_model(s: Settings) -> None:
  """Before the first stage spends time: what prepare writes and what the training and eval stages build
  must fit the model they load."""
  if not any(stage in s.stages for stage in ("sft", "grpo", "eval")):
    return
  if "grpo" in s.stages:
    _check_scorer(s)
  mc = model_config(s.model)
  if s.data.image_size != mc.vision.image_size:
    raise ConfigError(f"data.image_size: {s.data.image_size} differs from the model's image size "
                      f"{mc.vision.image_size} (model.checkpoint {s.model.checkpoint or 'empty'}); set "
                      f"--config.data.image_size={mc.vision.image_size}")
  try:
    tok, _ = load_tokenizer(s.model.tokenizer, mc, s.model.checkpoint)
  except (OSError, ValueError) as e:
    raise ConfigError(f"model.tokenizer: cannot load a tokenizer from "
                      f"{s.model.tokenizer or s.model.checkpoint!r} ({e})") from None
  template = PromptTemplate(prompt=s.prompt.template, item=s.prompt.item)
  length = max_prompt_len(tok, s.data.history_len, mc.num_image_tokens, template, s.prompt.max_text_tokens)
  if length + mc.num_image_tokens > mc.text.max_position_embeddings:
    raise ConfigError(f"prompt.max_text_tokens / data.history_len: prompts of up to {length} tokens plus "
                      f"{mc.num_image_tokens} image tokens exceed the model's {mc.text.max_position_embeddings} "
                      "positions; shorten the history, the item texts or the template")


def _check_scorer(s: Settings) -> None:
  """The scorer terms need a scorer answering at reward_models.scorer_url, or what the job needs to start one."""
  g, r = s.grpo, s.reward_models
  need = [t for t in ("profile", "nima") if g.reward == "models" and g.reward_weights.get(t, 0)]
  if not need or answers(r.scorer_url):
    return
  if not r.scorer_start:
    raise ConfigError(f"reward_models.scorer_start: False and nothing answers at reward_models.scorer_url "
                      f"{r.scorer_url}, but grpo.reward_weights gives {need} a weight; start the scorer or set "
                      "reward_models.scorer_start=True")
  for term in need:
    key = "scorer_qwen" if term == "profile" else "scorer_nima"
    if not getattr(r, key) or not Path(getattr(r, key)).exists():
      raise ConfigError(f"{r.key(key)}: {getattr(r, key) or 'empty'} is not there, and nothing answers at "
                        f"{r.scorer_url}, but grpo.reward_weights.{term} is {g.reward_weights[term]}; download it "
                        "(the fetch stage) or start a scorer there")
