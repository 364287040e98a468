"""What every training stage shares: which parameters train, the optimizer, the training state
(parameters, optimizer, step, PRNG key, non-finite counters) and the guarded update."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.models import lora
from pgen_jax.models.llama import layer_major_leaves
from pgen_jax.models.sharding import put_global

TRAINABLE_DEFAULT = ("language_model", "generation_embeddings", "generation_aligner", "generation_head")


def trainable_filter(parts: tuple[str, ...]) -> Callable:
  parts = tuple(parts)
  return lambda path, _: bool(path) and str(path[0]) in parts


def stage_filter(cfg) -> Callable:
  """What the SFT and GRPO stages (and bench.memory's versions of them) train: the parts in sft.trainable;
  with LoRA (model.lora.rank > 0) the adapters and the parts in sft.trainable other than the language model
  (lora.trainable_filter), whose base weights stay frozen."""
  parts = tuple(cfg.sft.trainable)
  return lora.trainable_filter(parts) if cfg.model.lora.rank else trainable_filter(parts)


def lr_schedule(lr: float, warmup: int, total: int, final_ratio: float = 0.1) -> Callable:
  """Learning rate of update `count` (0-based): a linear warm-up over `warmup` updates reaching `lr` at
  update warmup - 1, then a cosine decay to final_ratio x lr at the last update (total - 1). The first
  update trains: lr / warmup with a warm-up, lr without one (optax's warm-up starts at 0)."""
  floor = lr * final_ratio

  def schedule(count):
    c = jnp.asarray(count, jnp.float32) + 1.0  # updates numbered 1..total
    warm = lr * c / max(warmup, 1)
    progress = jnp.clip((c - warmup) / max(total - warmup, 1), 0.0, 1.0)
    decay = floor + (lr - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(c <= warmup, warm, decay)
  return schedule


def _part(path) -> str:
  """The top-level part ('language_model', 'aligner', ...) a parameter path starts with."""
  key = path[0]
  return str(getattr(key, "key", getattr(key, "name", key)))


def global_norm(tree) -> jax.Array:
  """optax.tree.norm, summed layer by layer over the decoder's stacked leaves (layer_major_leaves): the
  norm of the tree of separately stored layers, to the last bit."""
  total = 0
  for x in layer_major_leaves(tree):
    total = total + jnp.sum(jnp.square(x.real) + jnp.square(x.imag))
  return jnp.sqrt(total)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm with global_norm above."""
  def update_fn(updates, state, params=None):
    del params
    g_norm = global_norm(updates)
    trigger = jnp.squeeze(g_norm < max_norm)
    clip = lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm)
    return jax.tree.map(clip, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(lr: float, warmup: int, total: int, b1: float, b2: float, weight_decay: float,
                   clip: float, lr_scales: dict[str, float] | None = None) -> optax.GradientTransformation:
  """AdamW with global-norm clipping on lr_schedule; `warmup` and `total` count optimizer updates.
  `lr_scales` multiplies the learning rate of whole parts (e.g. a randomly initialised encoder that has
  further to go than the pretrained LM); the others keep `lr`."""
  chain = [clip_by_global_norm(clip),
           optax.adamw(lr_schedule(lr, warmup, total), b1=b1, b2=b2, weight_decay=weight_decay)]
  scales = {k: float(v) for k, v in (lr_scales or {}).items() if float(v) != 1.0}
  if scales:
    chain.append(optax.stateless(lambda updates, params=None: jax.tree_util.tree_map_with_path(
        lambda path, u: u * scales.get(_part(path), 1.0), updates)))
  return optax.chain(*chain)


def init_state(params, tx, seed: int = 0, mesh=None) -> dict[str, Any]:
  """Everything a resumed run needs besides the data iterator: the PRNG key is part of it.

  With a mesh, the leaves that are not on it yet (counters, the key, optimizer step counts) are
  replicated over it: they come back from a jitted update that way, and a first call that saw them
  otherwise would compile the update a second time."""
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
           "rng": jax.random.key_data(jax.random.key(seed)), "lr_scale": jnp.ones((), jnp.float32),
           "skipped": jnp.zeros((), jnp.int32), "bad_streak": jnp.zeros((), jnp.int32)}
  if mesh is None:
    return state
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else put_global(x, replicated), state)


def guarded_update(tx, state: dict, loss, grads) -> tuple[dict, dict]:
  """Applies `grads` unless the loss or the gradient norm is not finite; then the parameters and the
  optimizer stay as they were and the step is counted as skipped."""
  params, opt_state = state["params"], state["opt_state"]
  grad_norm = global_norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt = tx.update(grads, opt_state, params)
  updates = jax.tree.map(lambda u: u * state["lr_scale"].astype(u.dtype), updates)  # lowered after a rollback
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = {**state, "params": keep(new_params, params), "opt_state": keep(new_opt, opt_state),
               "step": state["step"] + 1, "skipped": state["skipped"] + (~ok).astype(jnp.int32),
               "bad_streak": jnp.where(ok, 0, state["bad_streak"] + 1)}
  return new_state, {"loss": loss, "grad_norm": grad_norm, "skipped": new_state["skipped"],
                     "bad_streak": new_state["bad_streak"]}
