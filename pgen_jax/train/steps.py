"""The jitted hot paths of the training stages, one builder each, from the stages' typed sections.

The loops (sft_loop, grpo_loop) run what these return, and pgen_jax.bench.memory lowers and compiles
the very same functions on abstract inputs: same step maths, same step configs, same jit options
(shardings and donation). A change here, or in the step maths they wrap, changes both.

  sft_optimizer / sft_train_step          the SFT update (train/sft.py)
  grpo_optimizer / grpo_update_step       the GRPO update with its loss (train/grpo.py)
  grpo_old_logprobs                       old log-probs of a batch sampled ahead
  rollout_sampling                        the GRPO rollout's SamplingConfig (sampling.jit_generate runs it)
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.models.janus import from_uint8
from pgen_jax.sampling.sampler import SamplingConfig
from pgen_jax.train import grpo, sft, update


def sft_optimizer(section, total: int):
  """AdamW of the sft section over `total` optimizer updates."""
  return update.make_optimizer(section.lr, section.warmup_steps, total, section.b1, section.b2, section.weight_decay,
                               section.clip, dict(section.lr_scales))


def sft_train_step(graphdef, tx, section, state_shardings, frozen_shardings, mesh):
  """jit of sft.train_step: (state, frozen, batch) -> (state, metrics); the state donated and kept in
  its shardings, the metrics replicated."""
  step_cfg = sft.StepConfig(grad_accum=section.grad_accum, uncond_prob=section.uncond_prob)
  return jax.jit(functools.partial(sft.train_step, graphdef, tx, step_cfg), donate_argnums=(0,),
                 in_shardings=(state_shardings, frozen_shardings, None),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())))


def grpo_optimizer(section):
  """AdamW of the grpo section; its schedule counts optimizer updates, inner_updates per step."""
  return update.make_optimizer(section.lr, section.warmup_steps * section.inner_updates,
                               section.num_steps * section.inner_updates, section.b1, section.b2,
                               section.weight_decay, section.grad_clip)


def grpo_step_config(section, prompt) -> grpo.GRPOConfig:
  return grpo.GRPOConfig(eps_low=section.eps_low, eps_high=section.eps_high, beta=section.beta,
                         logprobs=section.logprobs, cfg_weight=section.cfg_weight, temperature=section.temperature,
                         uncond_images=prompt.uncond == "keep_images")


def _micro_batches(section) -> int:
  return section.prompts_per_step // section.micro_batch if section.micro_batch else 1


def grpo_update_step(graphdef, tx, section, prompt, state_shardings, mesh):
  """jit of grpo.update_step: (state, frozen, ref_params, batch) -> (state, metrics); the state donated
  and kept in its shardings, the metrics replicated."""
  return jax.jit(functools.partial(grpo.update_step, graphdef, tx, grpo_step_config(section, prompt),
                                   micro_batches=_micro_batches(section)),
                 donate_argnums=(0,), out_shardings=(state_shardings, NamedSharding(mesh, P())))


def grpo_old_logprobs(graphdef, section, prompt):
  """jit of (params, frozen, batch) -> the loss's own teacher-forced log-probs (grpo.grpo_loss) of the
  batch's tokens: the old log-probs of a batch sampled ahead, cond or CFG-combined as grpo.logprobs says."""
  step_cfg = grpo_step_config(section, prompt)
  cfg_kw = (dict(cfg_weight=section.cfg_weight, uncond_images=step_cfg.uncond_images)
            if section.logprobs == "cfg" else {})

  micro_batches = _micro_batches(section)

  def old_logp(params, frozen, b):
    model = nnx.merge(graphdef, params, frozen)

    def one(b):
      return grpo.image_token_logprobs(
          model, b["ids"], b["mask"], from_uint8(b["images"].reshape(-1, *b["images"].shape[2:])), b["tokens"],
          uncond=b["uncond"] if cfg_kw else None, uncond_mask=b["uncond_mask"],
          temperature=section.temperature, **cfg_kw)
    b = {k: b[k] for k in ("ids", "mask", "uncond", "uncond_mask", "images", "tokens")}
    if micro_batches == 1:
      return one(b)
    # the update's micro-batches of whole groups, one after the other: a slice's activations at a time
    return jax.lax.map(one, grpo.split_prompts(b, micro_batches)).reshape(b["tokens"].shape)
  return jax.jit(old_logp)


def rollout_sampling(section, decode_images: bool,
                     decode_phases: int = SamplingConfig.decode_phases) -> SamplingConfig:
  """The GRPO rollout's sampling: group_size samples per prompt at the section's CFG weight and temperature."""
  return SamplingConfig(cfg_weight=section.cfg_weight, temperature=section.temperature,
                        num_samples=section.group_size, decode_images=decode_images, decode_phases=decode_phases,
                        prompt_chunk=section.rollout_chunk)
