"""History-conditioned image generation with classifier-free guidance, prompts shared by their samples.

One jitted call does the prefill and every decode step (lax.fori_loop, no host round trip per
token). Each prompt's conditional row and its unconditional row (at its true length: only the
tokens it attends) are prefilled once; their keys and values are the shared prefix that all G
samples of the prompt attend to while decoding, next to a cache of their own generated positions
(`LlamaModel.__call__(prefixes=...)`). History images go through SigLIP once. Each sample has its
own PRNG key, folded with the step, so the result does not depend on the batch composition or on
the mesh. The caches live inside the call: nothing stays allocated between rollouts.

The decode runs in `decode_phases` static phases, each its own fori_loop over a cache just long
enough for its steps (`phase_lengths`), padded once between phases: a step reads about the filled
part of its samples' caches instead of all num_tokens - 1 positions, on any backend, with the same
outputs (masked positions add exact zeros). docs/benchmarks.md has the bytes and the trade-offs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.models.janus import Janus, to_uint8
from pgen_jax.models.llama import Prefix
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
  decode_phases: int = 14     # decode loops over growing caches (1: one loop over the full cache)
  prompt_chunk: int = 0       # prompts sampled at once, the batch's chunks one after the other (0: all)

  def __post_init__(self):
    if self.decode_phases < 1:
      raise ValueError(f"SamplingConfig.decode_phases={self.decode_phases}: use 1 (one loop) or more")
    if self.prompt_chunk < 0:
      raise ValueError(f"SamplingConfig.prompt_chunk={self.prompt_chunk}: use 0 (all prompts at once) or more")


@dataclasses.dataclass
class SampleOutput:
  tokens: jax.Array    # (B * n, num_tokens) int32; prompt b's samples are rows b*n .. b*n+n-1
  logprobs: jax.Array  # (B * n, num_tokens) fp32 log-prob of each token under the sampling distribution
  images: jax.Array | None  # (B * n, H, W, 3) uint8


# Phase cache lengths are multiples of this (the last one is num_tokens - 1): whole vector tiles and
# sublanes for fp32 and bf16 on CPU, GPU and TPU, so a shorter cache never splits a tile.
PHASE_ALIGN = 16


def phase_lengths(num_tokens: int, phases: int, align: int = PHASE_ALIGN) -> list[int]:
  """Own-cache length of each decode phase, increasing, the last num_tokens - 1 (steps 1 .. num_tokens - 1).

  Step i writes cache position i - 1 and attends positions 0 .. i - 1, so the phase of length L runs
  the steps from the previous length + 1 to L. About equal phases, rounded up to `align`.
  """
  steps = max(num_tokens - 1, 1)
  return sorted({min(steps, -(-(-(-p * steps // phases)) // align) * align) for p in range(1, phases + 1)})


def per_sample(x, n: int):
  """(B, ...) -> (B * n, ...): each prompt's row once for each of its n samples, a prompt's samples
  adjacent (the order of the sampler's outputs). numpy in, numpy out; jax (or traced) in, jax out."""
  return (jnp if isinstance(x, jax.Array) else np).repeat(x, n, axis=0)


def guided_logits(cond, uncond, sampling: SamplingConfig):
  """CFG, temperature, top-k and top-p: the logits the next token is drawn from (fp32)."""
  logits = uncond + sampling.cfg_weight * (cond - uncond)
  if sampling.temperature > 0:
    logits = logits / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    # Drop a token once the more likely ones already reach top_p (the most likely always stays).
    drop_sorted = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs > sampling.top_p
    drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(drop, -jnp.inf, logits)
  return logits


def choose(logits, keys, step, sampling: SamplingConfig):
  """Next token per row and its log-prob under softmax(logits)."""
  if sampling.temperature > 0:
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    tok = jax.vmap(jax.random.categorical)(step_keys, logits)
  else:
    tok = jnp.argmax(logits, axis=-1)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
  return tok.astype(jnp.int32), logp


def generate(model: Janus, ids, mask, uncond, uncond_mask, images, keys, *, sampling: SamplingConfig,
             uncond_images: bool, mesh=None):
  """The whole sampler as one traceable function; see `Sampler` for the jitted, sharded entry.

  ids/mask (B, T): conditional prompts; uncond/uncond_mask (B, U): the unconditional rows as they are
  attended (U may be shorter than T); images (N, H, W, 3) in [-1, 1]; keys (B * n,).
  """
  n = sampling.num_samples
  num_tokens = sampling.num_tokens or model.config.num_image_tokens
  b = ids.shape[0]
  lm = model.language_model
  feats = model.get_image_features(images) if images.shape[0] else None
  cond_emb = model.embed_inputs(ids, image_features=feats)
  uncond_emb = model.embed_inputs(uncond, image_features=feats if uncond_images else None)
  constrain = lambda x: x if mesh is None else jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, fit_spec(x.shape, (BATCH,), mesh)))

  def prefill(emb, m):
    positions = jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0)
    hidden, kv = lm(constrain(emb), positions, m, return_kv=True, remat=False)  # nothing differentiates it
    return model.image_logits(hidden[:, -1]), Prefix(kv, m)

  if ids.shape[1] == uncond.shape[1]:  # one prefill, and one prefix of 2B prompts: [cond; uncond]
    logits, prefix = prefill(jnp.concatenate([cond_emb, uncond_emb]), jnp.concatenate([mask, uncond_mask]))
    prefixes, first_c, first_u = [prefix], logits[:b], logits[b:]
  else:
    (first_c, pc), (first_u, pu) = prefill(cond_emb, mask), prefill(uncond_emb, uncond_mask)
    prefixes = [pc, pu]
  tok, logp = choose(guided_logits(per_sample(first_c, n), per_sample(first_u, n), sampling), keys, 0, sampling)
  tokens = jnp.zeros((b * n, num_tokens), jnp.int32).at[:, 0].set(tok)
  logps = jnp.zeros((b * n, num_tokens), jnp.float32).at[:, 0].set(logp)
  # Rows [cond samples; uncond samples]; each continues its prompt's prefix from its length on.
  start = jnp.concatenate([per_sample(mask.sum(1), n), per_sample(uncond_mask.sum(1), n)])[:, None]
  dtype = lm.dtype or jnp.float32

  def step(i, carry):
    cache, tokens, logps, tok = carry
    e = model.prepare_embeddings_for_image_generation(tok[:, None])
    hidden, cache = lm(jnp.concatenate([e, e]), start + i - 1, None, cache, i - 1, prefixes=prefixes)
    logits = model.image_logits(hidden[:, 0])
    tok, logp = choose(guided_logits(logits[:b * n], logits[b * n:], sampling), keys, i, sampling)
    return cache, tokens.at[:, i].set(tok), logps.at[:, i].set(logp), tok

  # Each phase a loop over a cache that holds just its steps; between phases the cache grows by padding
  # (one copy, outside the loops). Positions not yet written are masked, as in one full-length cache.
  cache, done = None, 0
  for length in phase_lengths(num_tokens, sampling.decode_phases):
    if cache is None:
      cache = [tuple(constrain(jnp.zeros(lm.cache_shape(2 * b * n, length), dtype)) for _ in "kv")
               for _ in range(lm.cfg.num_hidden_layers)]
    else:
      pad = ((0, 0), (0, 0), (0, length - done), (0, 0))
      cache = [tuple(constrain(jnp.pad(c, pad)) for c in layer) for layer in cache]
    cache, tokens, logps, tok = jax.lax.fori_loop(done + 1, min(length, num_tokens - 1) + 1, step,
                                                  (cache, tokens, logps, tok))
    done = length
  images_out = None
  if sampling.decode_images and num_tokens == model.config.num_image_tokens:
    images_out = to_uint8(model.decode_image_tokens(tokens))
  return tokens, logps, images_out


class Sampler:
  """Jitted, sharded sampler. `num_samples` images per prompt, the prompt prefilled once for them."""

  def __init__(self, model: Janus, mesh, sampling: SamplingConfig = SamplingConfig()):
    self.mesh, self.sampling, self.config = mesh, sampling, model.config
    self.compute_dtype = model.language_model.dtype
    self.graphdef, state = nnx.split(model)
    self.state_shardings = param_shardings(state, mesh)
    self.state = jax.device_put(state, self.state_shardings)
    self._fns: dict = {}

  def inputs(self, batch: PromptBatch, key: jax.Array) -> list[np.ndarray]:
    """The jitted function's host inputs: ids, mask, uncond rows at their true length, images, keys."""
    n_ph = int((batch.ids == self.config.image_token_id).sum())
    if n_ph != batch.images.shape[0] * self.config.num_image_tokens:
      raise ValueError(f"prompts hold {n_ph} image placeholders but {batch.images.shape[0]} images were given")
    chunk = self.sampling.prompt_chunk
    if chunk and chunk < len(batch.ids):  # each chunk takes an equal share of the images, in order
      per_chunk = (batch.ids == self.config.image_token_id).reshape(-1, chunk * batch.ids.shape[1]).sum(1)
      if len(set(per_chunk.tolist())) > 1:
        raise ValueError(f"prompt_chunk {chunk}: the chunks' prompts hold different numbers of images "
                         f"({per_chunk.tolist()} placeholders); sample them at once (prompt_chunk 0)")
    uncond, uncond_mask = batch.uncond_rows()
    keys = np.asarray(jax.random.key_data(jax.random.split(key, batch.ids.shape[0] * self.sampling.num_samples)))
    return [batch.ids, batch.mask, uncond, uncond_mask, batch.images.astype(np.float32), keys]

  def __call__(self, batch: PromptBatch, key: jax.Array) -> SampleOutput:
    fn = self.compiled(batch.uncond_has_images)
    tokens, logps, images = fn(self.state, *map(self._replicate, self.inputs(batch, key)))
    return SampleOutput(tokens=tokens, logprobs=logps, images=images)

  def _replicate(self, x: np.ndarray) -> jax.Array:
    # A global array from identical host data: works on one host and on many.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(self.mesh, P()), lambda idx: x[idx])

  def compiled(self, uncond_images: bool):
    """The jitted sampler for this model, mesh and config."""
    if uncond_images not in self._fns:
      self._fns[uncond_images] = jit_generate(self.graphdef, self.state_shardings, self.mesh, self.sampling, uncond_images,
                                              self.compute_dtype)
    return self._fns[uncond_images]


def jit_generate(graphdef, state_shardings, mesh, sampling: SamplingConfig, uncond_images: bool, compute_dtype=None):
  """`generate` jitted over the mesh: (state, ids, mask, uncond, uncond_mask, images, key_data) ->
  (tokens, logprobs, images). Also lowered ahead of time, on abstract inputs, by pgen_jax.bench.memory.

  With a compute dtype, floating parameters are cast to it once per call (fp32 master weights ->
  bf16), so each decode step reads half the bytes instead of converting the weights again."""
  cast = lambda state: state if compute_dtype is None else jax.tree.map(
      lambda x: x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)

  def run(state, ids, mask, uncond, uncond_mask, images, key_data):
    model = nnx.merge(graphdef, cast(state))

    def one(ids, mask, uncond, uncond_mask, images, key_data):
      return generate(model, ids, mask, uncond, uncond_mask, images, jax.random.wrap_key_data(key_data),
                      sampling=sampling, uncond_images=uncond_images, mesh=mesh)

    b, chunk = ids.shape[0], sampling.prompt_chunk
    if not chunk or chunk >= b:
      return one(ids, mask, uncond, uncond_mask, images, key_data)
    if b % chunk:
      raise ValueError(f"prompt_chunk {chunk} must divide the {b} prompts")
    # Chunks one after the other (lax.map): the KV caches and the prefill's activations are a chunk's;
    # every array's rows are whole prompts' (their images, their samples' keys), so each splits evenly.
    split = lambda x: x.reshape(b // chunk, x.shape[0] // (b // chunk), *x.shape[1:])
    out = jax.lax.map(lambda xs: one(*xs), tuple(map(split, (ids, mask, uncond, uncond_mask, images, key_data))))
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)

  replicated = NamedSharding(mesh, P())
  return jax.jit(run, in_shardings=(state_shardings,) + (replicated,) * 6,
                 out_shardings=(replicated, replicated, replicated))
