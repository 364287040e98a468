"""Supervised fine-tuning: cross-entropy on the target item's VQ tokens given the history prompt.

The target image is tokenized by the frozen VQ model inside the step (the original L2-normalised
rule), unless the batch brings its `target_tokens` (sft.pretokenize: item_tokens.py); the tokens are fed back through the generation embeddings and aligner (teacher forcing) and
scored by the generation head. Only the configured submodules train; parameters stay in their
storage dtype (fp32 master weights) while the model computes in its compute dtype (bf16).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pgen_jax.models.janus import Janus, from_uint8
from pgen_jax.train.update import guarded_update

def image_loss(model: Janus, ids, mask, images, targets):
  """Mean CE of the target tokens (B, N) given left-padded prompts (B, P) and history images."""
  prompt = model.embed_inputs(ids, images)
  fed = model.prepare_embeddings_for_image_generation(targets[:, :-1]).astype(prompt.dtype)
  emb = jnp.concatenate([prompt, fed], axis=1)
  full_mask = jnp.concatenate([mask, jnp.ones_like(targets[:, :-1])], axis=1)
  positions = jnp.maximum(jnp.cumsum(full_mask, axis=1) - 1, 0)
  hidden, _ = model.language_model(emb, positions, full_mask)
  logits = model.image_logits(hidden[:, ids.shape[1] - 1:])  # the BOI position predicts token 0
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@dataclasses.dataclass(frozen=True)
class StepConfig:
  grad_accum: int = 1
  uncond_prob: float = 0.1   # CFG needs an unconditional model: train it on blanked prompts


def target_tokens(model: Janus, batch: dict):
  """(B, n_img) the batch's target ids: brought in (pretokenized), or from its images by the frozen VQ."""
  if "target_tokens" in batch:
    return batch["target_tokens"]
  return jax.lax.stop_gradient(model.get_image_tokens(from_uint8(batch["target"])))


def batch_loss(graphdef, params, frozen, batch, key, cfg: StepConfig):
  model = nnx.merge(graphdef, params, frozen)
  targets = target_tokens(model, batch)
  ids, mask = batch["ids"], batch["mask"]
  if cfg.uncond_prob > 0:  # the CFG row exactly as the sampler attends it
    drop = jax.random.bernoulli(key, cfg.uncond_prob, (ids.shape[0], 1))
    ids = jnp.where(drop, batch["uncond"], ids)
    mask = jnp.where(drop, batch.get("uncond_mask", mask), mask)
  return image_loss(model, ids, mask, from_uint8(batch["history"]), targets)


def train_step(graphdef, tx, cfg: StepConfig, state: dict, frozen, batch: dict):
  """One optimizer update over grad_accum micro-batches; non-finite updates are skipped."""
  params = state["params"]
  key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  # Micro-batch i is rows i, i + grad_accum, ...: each device's contiguous share of the batch holds an equal
  # share of every micro-batch, so each is split over all devices as the batch is. Contiguous slices put the
  # batch's sharding on the scanned axis (at 64 = 4 x 16 on 8 devices each slice split 2 ways, repeated 4
  # times), and XLA could only reach that by replicating weights and activations (docs/benchmarks.md). Each
  # step reads its rows in place: a transposed copy of the batch would cost its size in memory.
  rows = jax.tree.map(lambda x: x.reshape(-1, cfg.grad_accum, *x.shape[1:]), batch)
  grad_fn = jax.value_and_grad(lambda p, b, k: batch_loss(graphdef, p, frozen, b, k, cfg))

  def accumulate(carry, i):
    loss_sum, grad_sum = carry
    b = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False), rows)
    loss, grads = grad_fn(params, b, jax.random.fold_in(key, i))
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), jnp.arange(cfg.grad_accum))
  loss, grads = loss / cfg.grad_accum, jax.tree.map(lambda g: g / cfg.grad_accum, grads)
  return guarded_update(tx, state, loss, grads)


def eval_loss(graphdef, params, frozen, batch):
  model = nnx.merge(graphdef, params, frozen)
  return image_loss(model, batch["ids"], batch["mask"], from_uint8(batch["history"]), target_tokens(model, batch))
