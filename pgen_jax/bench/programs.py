"""The jitted functions the training loops run, with abstract inputs of the configured shape.

Each is made by the loop's own builder (pgen_jax.train.steps, pgen_jax.sampling.jit_generate) from the
config's sections, so `bench.memory` lowers and compiles the very programs the loops run. Flag-free, so
that tests can import it next to the benchmarks' flags.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.eval.evaluate import generator_sampling
from pgen_jax.eval.measure import MetricModels, metric_model_section
from pgen_jax.models import Janus, lora, preset, quant
from pgen_jax.models.llama import remat_policy
from pgen_jax.models.sharding import BATCH, fit_spec, param_shardings
from pgen_jax.rewards import clip as clip_lib, dino as dino_lib
from pgen_jax.rewards.models import RANDOM, RewardModels
from pgen_jax.sampling.sampler import SamplingConfig, jit_generate
from pgen_jax.train import grpo, steps, update
from pgen_jax.train.grpo_rewards import IMAGE_KINDS


def spec(shape, dtype, mesh, axes=()) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, fit_spec(shape, axes, mesh)))


def _janus(cfg, config, remat):
  """The configured Janus, abstract, with its options given at construction as model_from_config gives them;
  with LoRA (model.lora.rank > 0) adapted and its base quantised (model.lora.base_qtype), as
  train.stage_model.training_model builds it."""
  lora_cfg = cfg.model.lora.config()

  def make():
    model = Janus(config, nnx.Rngs(0), dtype=jnp.dtype(cfg.model.dtype), param_dtype=jnp.dtype(cfg.model.param_dtype),
                  remat=remat_policy(remat), attention_impl=cfg.model.attention)
    if lora_cfg is None:
      return model
    return quant.quantize_base(lora.apply_lora(model, lora_cfg, rngs=cfg.seed), cfg.model.lora.base_qtype)
  return nnx.eval_shape(make)


def abstract_model(cfg, mesh, preset_name: str = "", trained: bool = True):
  """(graphdef, abstract sharded state, model config) of the configured architecture, built without remat
  as the eval stage and `generate` build it; with LoRA, adapted (and quantised) as the training stages build
  it unless `trained` is False: eval and generate load the merged model, a plain Janus."""
  config = preset(preset_name or cfg.model.preset)
  if not trained:
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora=dataclasses.replace(cfg.model.lora, rank=0, base_qtype="none")))
  graphdef, state = nnx.split(_janus(cfg, config, "none"))
  shardings = param_shardings(state, mesh)
  return graphdef, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                                shardings), config


def stage_graphdef(cfg, config, remat):
  """The graphdef of the model a training stage builds: remat its section's policy (model_from_config(remat=))."""
  return nnx.split(_janus(cfg, config, remat))[0]


def sampler_inputs(cfg, mesh, config, prompts: int, samples: int, length: int):
  n_img = cfg.data.history_len
  size = config.vision.image_size
  uncond_len = 2 if cfg.prompt.uncond_pads == "drop" and cfg.prompt.uncond == "official" else length
  if cfg.prompt.uncond == "keep_images" and cfg.prompt.uncond_pads == "drop":
    uncond_len = 2 + n_img * (config.num_image_tokens + 2)
  i32 = jnp.int32
  return [spec((prompts, length), i32, mesh), spec((prompts, length), i32, mesh),
          spec((prompts, uncond_len), i32, mesh), spec((prompts, uncond_len), i32, mesh),
          spec((prompts * n_img, size, size, 3), jnp.float32, mesh),
          spec((prompts * samples, 2), jnp.uint32, mesh)]


def sampler(cfg, mesh, graphdef, state, config, sampling: SamplingConfig, prompts: int, length: int):
  """(the jitted sampler as `Sampler` builds it, its abstract arguments)."""
  fn = jit_generate(graphdef, jax.tree.map(lambda x: x.sharding, state), mesh, sampling,
                    cfg.prompt.uncond == "keep_images", jnp.dtype(cfg.model.dtype))
  return fn, (state, *sampler_inputs(cfg, mesh, config, prompts, sampling.num_samples, length))


def rollout_sampling(cfg, decode_phases: int = SamplingConfig.decode_phases) -> SamplingConfig:
  """The GRPO loop's rollout sampling (decoding images for the rewards that judge them)."""
  return steps.rollout_sampling(cfg.grpo, cfg.grpo.reward in IMAGE_KINDS, decode_phases)


def train_state(state, cfg, tx, mesh):
  """(params, frozen, abstract training state) with the shardings a real run gets."""
  params, frozen = state.split(update.stage_filter(cfg), ...)
  shapes = jax.eval_shape(lambda p: update.init_state(p, tx), params)
  # As in a real run, where the optimizer's moments are created from the placed parameters: each
  # moment takes its parameter's sharding, everything else (counters, the key) is replicated.
  at = lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  replicated = NamedSharding(mesh, P())
  opt_state = optax.tree_map_params(tx, lambda x, p: at(x, p.sharding), shapes["opt_state"], params,
                                    transform_non_params=lambda x: at(x, replicated))
  full = {**jax.tree.map(lambda x: at(x, replicated), shapes), "params": params, "opt_state": opt_state}
  return params, frozen, full


def abstract_models(section, mesh, dtype) -> RewardModels:
  """The models a RewardModelsSection names, as load_reward_models makes them, with abstract sharded
  parameters ("random:<preset>" names the architecture; a directory is taken to hold the paper's models)."""
  def abstract(make):  # parameters sharded as place_on_mesh shards them
    gd, st = nnx.split(nnx.eval_shape(make))
    return nnx.merge(gd, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), st,
                                      param_shardings(st, mesh)))

  arch = lambda spec, presets, default: presets[spec[len(RANDOM):]] if spec.startswith(RANDOM) else presets[default]
  out = RewardModels(dino_size=section.dino_size)
  if section.clip:
    clip_cfg = arch(section.clip, clip_lib.PRESETS, "vit-h-14")
    out.clip = abstract(lambda: clip_lib.CLIP(clip_cfg, nnx.Rngs(0), dtype=dtype, param_dtype=dtype))
  if section.dino:
    dino_cfg = dataclasses.replace(arch(section.dino, dino_lib.PRESETS, "dinov2-large"), image_size=section.dino_size)
    out.dino = abstract(lambda: dino_lib.Dino(dino_cfg, nnx.Rngs(0), dtype=dtype, param_dtype=dtype))
  return out


def reward_terms(cfg, mesh):
  """(the GRPO loop's jitted CLIP/DINO reward terms (RewardModels.terms_fn), its abstract arguments) on one
  step's rollouts, each prompt's history, target and future images given (and encoded) once; None when the
  reward uses no CLIP/DINO."""
  grpo_cfg, size = cfg.grpo, cfg.data.image_size
  if grpo_cfg.reward != "models" or not (cfg.reward_models.clip or cfg.reward_models.dino):
    return None
  models = abstract_models(cfg.reward_models, mesh, jnp.dtype(cfg.model.dtype))
  rcfg = models.config(((k, float(v)) for k, v in grpo_cfg.reward_weights.items()), grpo_cfg.reward_normalize)
  prompts = grpo_cfg.prompts_per_step
  data = {"generated": spec((prompts * grpo_cfg.group_size, size, size, 3), jnp.uint8, mesh, (BATCH,)),
          "history": spec((prompts, cfg.data.history_len, size, size, 3), jnp.uint8, mesh, (BATCH,)),
          "target": spec((prompts, size, size, 3), jnp.uint8, mesh, (BATCH,)),
          "future": spec((prompts, cfg.data.future_len, size, size, 3), jnp.uint8, mesh, (BATCH,))}
  fn, states = models.jitted_terms(rcfg)
  return fn, (states, data)


def metric_embeddings(cfg, mesh) -> dict:
  """{"clip"|"dino": (the eval stage's jitted embedding, its abstract arguments: the model's state, one chunk
  of images)} for the metric models eval loads (eval.measure.MetricModels, fp32)."""
  metrics = MetricModels(abstract_models(metric_model_section(cfg), mesh, jnp.float32))
  size = cfg.data.image_size
  chunk = spec((metrics.chunk, size, size, 3), jnp.uint8, mesh)
  return {kind: (metrics.embedder(kind)[0], (metrics.embedder(kind)[1], chunk)) for kind in ("clip", "dino") if getattr(metrics.m, kind) is not None}


def eval_sampling(cfg, decode_phases: int = SamplingConfig.decode_phases) -> SamplingConfig:
  """The eval stage's sampling of a generator (eval.evaluate.generator_sampling)."""
  return dataclasses.replace(generator_sampling(cfg.eval), decode_phases=decode_phases)


def shardings(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def sft_train_step(cfg, mesh, graphdef, state, config, length: int):
  """(the SFT loop's jitted train step, its abstract arguments (state, frozen, batch))."""
  section, b = cfg.sft, cfg.sft.batch_size
  graphdef = stage_graphdef(cfg, config, section.remat)
  tx = steps.sft_optimizer(section, section.num_steps or 1000)  # the total only moves the schedule's constants
  _, frozen, full = train_state(state, cfg, tx, mesh)
  size = config.vision.image_size
  batch = {"ids": spec((b, length), jnp.int32, mesh, (BATCH,)), "uncond": spec((b, length), jnp.int32, mesh, (BATCH,)),
           "mask": spec((b, length), jnp.int32, mesh, (BATCH,)),
           "uncond_mask": spec((b, length), jnp.int32, mesh, (BATCH,)),
           "history": spec((b, cfg.data.history_len, size, size, 3), jnp.uint8, mesh, (BATCH,))}
  if section.pretokenize:  # the loop brings the targets' VQ ids (train/item_tokens.py)
    batch["target_tokens"] = spec((b, config.num_image_tokens), jnp.int32, mesh, (BATCH,))
  else:
    batch["target"] = spec((b, size, size, 3), jnp.uint8, mesh, (BATCH,))
  fn = steps.sft_train_step(graphdef, tx, section, shardings(full), shardings(frozen), mesh)
  return fn, (full, frozen, batch)


def grpo_update(cfg, mesh, graphdef, state, config, length: int) -> dict:
  """{"update_step": (fn, (state, frozen, ref_params, batch)), "old_logprobs": (fn, (params, frozen, batch))}:
  the GRPO loop's jitted update and old log-probs, with abstract arguments."""
  section = cfg.grpo
  graphdef = stage_graphdef(cfg, config, section.remat)
  tx = steps.grpo_optimizer(section)
  params, frozen, full = train_state(state, cfg, tx, mesh)
  b, n = section.prompts_per_step, section.group_size
  ins = sampler_inputs(cfg, mesh, config, b, n, length)
  size, tokens = config.vision.image_size, config.num_image_tokens
  batch = {"ids": ins[0], "mask": ins[1], "uncond": ins[2], "uncond_mask": ins[3],
           "images": spec((b, cfg.data.history_len, size, size, 3), jnp.uint8, mesh, (BATCH,)),
           "tokens": spec((b * n, tokens), jnp.int32, mesh, (BATCH,)),
           "old_logp": spec((b * n, tokens), jnp.float32, mesh, (BATCH,)),
           "advantages": spec((b * n,), jnp.float32, mesh, (BATCH,)),
           "weights": spec((b * n,), jnp.float32, mesh, (BATCH,)), "on_policy": spec((), jnp.bool_, mesh)}
  update_fn = steps.grpo_update_step(graphdef, tx, section, cfg.prompt, shardings(full), mesh)
  old_logp = steps.grpo_old_logprobs(graphdef, section, cfg.prompt)
  ref = grpo.reference_params(params) if section.beta else None
  return {"update_step": (update_fn, (full, frozen, ref, batch)), "old_logprobs": (old_logp, (params, frozen, batch))}
