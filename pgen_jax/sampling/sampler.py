"""History-conditioned image generation with classifier-free guidance and a preallocated KV cache.

One jitted call does the prefill and every decode step (lax.fori_loop, no host round trip per
token). Rows are laid out per sample as (cond, uncond) pairs, so a pair always sits on the same
device and CFG needs no communication. Each sample has its own PRNG key, folded with the step, so
the result does not depend on the batch composition or on the mesh.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.models.janus import Janus, to_uint8
from pgen_jax.models.sharding import BATCH, fit_spec, param_shardings
from pgen_jax.sampling.prompts import PromptBatch


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  cfg_weight: float = 5.0     # logits = u + w * (c - u)
  temperature: float = 1.0    # 0: greedy
  top_k: int = 0              # 0: off
  top_p: float = 1.0          # 1: off
  num_samples: int = 1        # images per prompt
  num_tokens: int | None = None  # default: the model's num_image_tokens (576)
  decode_images: bool = True


@dataclasses.dataclass
class SampleOutput:
  tokens: jax.Array    # (B * n, num_tokens) int32; prompt b's samples are rows b*n .. b*n+n-1
  logprobs: jax.Array  # (B * n, num_tokens) fp32 log-prob of each token under the sampling distribution
  images: jax.Array | None  # (B * n, H, W, 3) uint8


def guided_logits(cond, uncond, cfg: SamplingConfig):
  """CFG, temperature, top-k and top-p: the logits the next token is drawn from (fp32)."""
  logits = uncond + cfg.cfg_weight * (cond - uncond)
  if cfg.temperature > 0:
    logits = logits / cfg.temperature
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if cfg.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    # Drop a token once the more likely ones already reach top_p (the most likely always stays).
    drop_sorted = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs > cfg.top_p
    drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(drop, -jnp.inf, logits)
  return logits


def choose(logits, keys, step, cfg: SamplingConfig):
  """Next token per row and its log-prob under softmax(logits)."""
  if cfg.temperature > 0:
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    tok = jax.vmap(jax.random.categorical)(step_keys, logits)
  else:
    tok = jnp.argmax(logits, axis=-1)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
  return tok.astype(jnp.int32), logp


def generate(model: Janus, ids, uncond, mask, images, keys, cache, *, cfg: SamplingConfig,
             uncond_images: bool, mesh=None):
  """The whole sampler as one traceable function; see `Sampler` for the jitted, sharded entry."""
  n = cfg.num_samples
  num_tokens = cfg.num_tokens or model.config.num_image_tokens
  b, t = ids.shape
  has_images = images.shape[0] > 0
  cond_emb = model.embed_inputs(ids, images if has_images else None)
  uncond_emb = model.embed_inputs(uncond, images if has_images and uncond_images else None)
  rows = 2 * b * n

  def pairs(x):  # (B, ...) x2 -> (B*n*2, ...) as [p0s0 cond, p0s0 uncond, p0s1 cond, ...]
    return jnp.repeat(x, n, axis=0).reshape(rows, *x.shape[2:])

  emb = pairs(jnp.stack([cond_emb, uncond_emb], axis=1))
  row_mask = pairs(jnp.stack([mask, mask], axis=1))
  if mesh is not None:
    emb = jax.lax.with_sharding_constraint(emb, NamedSharding(mesh, fit_spec(emb.shape, (BATCH,), mesh)))
  positions = jnp.maximum(jnp.cumsum(row_mask, axis=1) - 1, 0)
  full_mask = jnp.concatenate([row_mask, jnp.ones((rows, num_tokens), row_mask.dtype)], axis=1)
  lm = model.language_model

  def next_token(hidden, step):
    logits = model.image_logits(hidden).reshape(b * n, 2, -1)
    return choose(guided_logits(logits[:, 0], logits[:, 1], cfg), keys, step, cfg)

  hidden, cache = lm(emb, positions, full_mask, cache, 0)  # prefill
  tok, logp = next_token(hidden[:, -1], 0)
  tokens = jnp.zeros((b * n, num_tokens), jnp.int32).at[:, 0].set(tok)
  logps = jnp.zeros((b * n, num_tokens), jnp.float32).at[:, 0].set(logp)
  last_pos = positions[:, -1:]

  def step(i, carry):
    cache, tokens, logps, tok = carry
    e = jnp.repeat(model.prepare_embeddings_for_image_generation(tok[:, None]), 2, axis=0)
    hidden, cache = lm(e, last_pos + i, full_mask, cache, t + i - 1)
    tok, logp = next_token(hidden[:, 0], i)
    return cache, tokens.at[:, i].set(tok), logps.at[:, i].set(logp), tok

  cache, tokens, logps, _ = jax.lax.fori_loop(1, num_tokens, step, (cache, tokens, logps, tok))
  images_out = None
  if cfg.decode_images and num_tokens == model.config.num_image_tokens:
    images_out = to_uint8(model.decode_image_tokens(tokens))
  return tokens, logps, images_out, cache


class Sampler:
  """Jitted, sharded sampler; keeps its KV cache buffer and donates it to each call."""

  def __init__(self, model: Janus, mesh, cfg: SamplingConfig = SamplingConfig()):
    self.mesh, self.cfg, self.config = mesh, cfg, model.config
    self.compute_dtype = model.language_model.dtype or model.lm_head.kernel[...].dtype
    self.graphdef, state = nnx.split(model)
    self.state_shardings = param_shardings(state, mesh)
    self.state = jax.device_put(state, self.state_shardings)
    self._cache = None
    self._fns: dict = {}

  def _cache_for(self, rows: int, length: int, dtype):
    cfg = self.config.text
    shape = (rows, length, cfg.num_key_value_heads, cfg.dim_per_head)
    sharding = NamedSharding(self.mesh, fit_spec(shape, (BATCH, None, "tensor", None), self.mesh))
    if self._cache is None or self._cache[0][0].shape != shape:
      zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
      self._cache = [(zeros(), zeros()) for _ in range(cfg.num_hidden_layers)]
    return self._cache, sharding

  def __call__(self, batch: PromptBatch, key: jax.Array) -> SampleOutput:
    n_ph = int((batch.ids == self.config.image_token_id).sum())
    if n_ph != batch.images.shape[0] * self.config.num_image_tokens:
      raise ValueError(f"prompts hold {n_ph} image placeholders but {batch.images.shape[0]} images were given")
    b, t = batch.ids.shape
    num_tokens = self.cfg.num_tokens or self.config.num_image_tokens
    cache, cache_sharding = self._cache_for(2 * b * self.cfg.num_samples, t + num_tokens, self.compute_dtype)
    keys = np.asarray(jax.random.key_data(jax.random.split(key, b * self.cfg.num_samples)))
    fn = self._compiled(batch.uncond_has_images, cache_sharding)
    host = [batch.ids, batch.uncond, batch.mask, batch.images.astype(np.float32), keys]
    tokens, logps, images, self._cache = fn(self.state, *map(self._replicate, host), cache)
    return SampleOutput(tokens=tokens, logprobs=logps, images=images)

  def _replicate(self, x: np.ndarray) -> jax.Array:
    # A global array from identical host data: works on one host and on many.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(self.mesh, P()), lambda idx: x[idx])

  def _compiled(self, uncond_images: bool, cache_sharding):
    if (uncond_images, cache_sharding) in self._fns:
      return self._fns[uncond_images, cache_sharding]
    graphdef, cfg, mesh = self.graphdef, self.cfg, self.mesh

    def run(state, ids, uncond, mask, images, key_data, cache):
      keys = jax.random.wrap_key_data(key_data)
      return generate(nnx.merge(graphdef, state), ids, uncond, mask, images, keys, cache, cfg=cfg,
                      uncond_images=uncond_images, mesh=mesh)

    replicated = NamedSharding(mesh, P())
    fn = jax.jit(run, donate_argnums=(6,),
                 in_shardings=(self.state_shardings, replicated, replicated, replicated, replicated,
                               replicated, cache_sharding),
                 out_shardings=(replicated, replicated, replicated, cache_sharding))
    self._fns[uncond_images, cache_sharding] = fn
    return fn
