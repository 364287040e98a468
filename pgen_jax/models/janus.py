"""Janus-Pro: understanding encoder + aligner, LLaMA decoder, VQ tokenizer and generation heads.

Submodule and method names follow transformers' JanusForConditionalGeneration where it has the same
operation; images are channels-last (B, H, W, C) throughout, as is usual in JAX.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgen_jax.models.config import JanusConfig
from pgen_jax.models.layers import ACTIVATIONS, MlpAligner, linear
from pgen_jax.models.llama import LlamaModel
from pgen_jax.models.siglip import VisionModel
from pgen_jax.models.vq import VQModel


class GenerationHead(nnx.Module):
  """Hidden state -> logits over the VQ codebook."""

  def __init__(self, cfg: JanusConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    q = cfg.vq
    self.act = q.hidden_act
    self.proj_out = linear(q.image_token_embed_dim, q.projection_dim, rngs, dtype=dtype, param_dtype=param_dtype)
    self.vision_head = linear(q.projection_dim, q.num_embeddings, rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, hidden):
    return self.vision_head(ACTIVATIONS[self.act](self.proj_out(hidden)))


@dataclasses.dataclass
class JanusOutput:
  logits: jax.Array         # (B, T, vocab) text logits, fp32
  hidden_states: jax.Array  # (B, T, D) last hidden state after the final norm
  cache: list | None = None


class Janus(nnx.Module):
  """All of Janus-Pro. `dtype` is the compute dtype, `param_dtype` the storage dtype; `remat` and
  `attention_impl` are the language model's options (LlamaModel)."""

  def __init__(self, config: JanusConfig, rngs: nnx.Rngs | None = None, *, dtype=None,
               param_dtype=jnp.float32, remat="none", attention_impl: str = "auto"):
    config.validate()
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    v, q, t = config.vision, config.vq, config.text
    self.config = config
    self.vision_model = VisionModel(v, rngs, **kw)
    self.aligner = MlpAligner(v.hidden_size, v.projection_dim, v.depth, rngs, act=v.hidden_act, **kw)
    self.vqmodel = VQModel(q, config.image_grid, rngs, **kw)
    self.generation_embeddings = nnx.Embed(q.num_embeddings, q.embed_dim, rngs=rngs, **kw)
    self.generation_aligner = MlpAligner(q.embed_dim, q.projection_dim, q.num_hidden_layers, rngs,
                                         act=q.hidden_act, **kw)
    self.generation_head = GenerationHead(config, rngs, **kw)
    self.language_model = LlamaModel(t, rngs, remat=remat, attention_impl=attention_impl, **kw)
    self.lm_head = linear(t.hidden_size, t.vocab_size, rngs, bias=False, **kw)

  # ---- understanding ------------------------------------------------------------------------

  def get_image_features(self, pixel_values):
    """(N, H, W, C) images normalised with mean/std 0.5 -> (N, num_image_tokens, D) LM inputs."""
    if pixel_values.ndim == 5:  # (B, n, H, W, C): n images per prompt
      pixel_values = pixel_values.reshape(-1, *pixel_values.shape[2:])
    return self.aligner(self.vision_model(pixel_values))

  def embed_inputs(self, input_ids, pixel_values=None, *, image_features=None):
    """Token embeddings with image features spliced, in order, into the image placeholders.

    pixel_values (N, H, W, C): the k-th placeholder of the whole batch (row-major) takes image k's
    features. (B, n, H, W, C): row b's placeholders take row b's images, so a row whose
    placeholders were blanked (an unconditional CFG row) simply leaves its images unused.
    image_features: instead of (N, H, W, C) pixels, their `get_image_features` (N, 576, D), so
    that rows sharing images (a CFG pair) encode them once.
    """
    embeds = self.language_model.embed_tokens(input_ids)
    if pixel_values is None and image_features is None:
      return embeds
    if pixel_values is not None and pixel_values.ndim == 5:
      b, n = pixel_values.shape[:2]
      feats = self.get_image_features(pixel_values).reshape(b, -1, embeds.shape[-1]).astype(embeds.dtype)
      is_image = input_ids == self.config.image_token_id
      idx = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, feats.shape[1] - 1)
      spliced = jnp.take_along_axis(feats, idx[..., None], axis=1)
      return jnp.where(is_image[..., None], spliced, embeds)
    feats = self.get_image_features(pixel_values) if image_features is None else image_features
    feats = feats.reshape(-1, feats.shape[-1]).astype(embeds.dtype)
    is_image = (input_ids == self.config.image_token_id).reshape(-1)
    if not isinstance(is_image, jax.core.Tracer) and int(is_image.sum()) != feats.shape[0]:
      raise ValueError(f"{int(is_image.sum())} image placeholder tokens but {feats.shape[0]} image "
                       f"features ({feats.shape[0] // self.config.num_image_tokens} images x "
                       f"{self.config.num_image_tokens}); each image needs exactly "
                       f"{self.config.num_image_tokens} placeholders")
    # The k-th placeholder (row-major over the batch) takes the k-th feature row.
    idx = jnp.clip(jnp.cumsum(is_image) - 1, 0, feats.shape[0] - 1)
    flat = jnp.where(is_image[:, None], feats[idx], embeds.reshape(-1, embeds.shape[-1]))
    return flat.reshape(embeds.shape)

  def __call__(self, input_ids=None, pixel_values=None, attention_mask=None, positions=None, *,
               inputs_embeds=None, cache=None, cache_index=0) -> JanusOutput:
    """Text logits for input ids (with image placeholders filled from pixel_values)."""
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
      inputs_embeds = self.embed_inputs(input_ids, pixel_values)
    hidden, cache = self.language_model(inputs_embeds, positions, attention_mask, cache, cache_index)
    logits = self.lm_head(hidden).astype(jnp.float32)
    return JanusOutput(logits=logits, hidden_states=hidden, cache=cache)

  # ---- generation ---------------------------------------------------------------------------

  def prepare_embeddings_for_image_generation(self, image_tokens):
    """VQ token ids (B, T) -> LM input embeddings (B, T, D)."""
    return self.generation_aligner(self.generation_embeddings(image_tokens))

  def image_logits(self, hidden_states):
    """Last hidden states -> fp32 logits over the VQ codebook."""
    return self.generation_head(hidden_states).astype(jnp.float32)

  def get_image_tokens(self, pixel_values):
    """Images in [-1, 1] (B, H, W, 3) at the model's image_size -> VQ tokens (B, grid*grid)."""
    return self.vqmodel.encode(pixel_values)

  def decode_image_tokens(self, image_tokens):
    """VQ tokens (B, grid*grid) -> images (B, H, W, 3) roughly in [-1, 1]."""
    return self.vqmodel.decode(image_tokens).astype(jnp.float32)


def from_uint8(images_uint8):
  """uint8 pixels -> float32 in [-1, 1], the range of the model's image inputs (numpy in, numpy out;
  jax in, jax out)."""
  return images_uint8.astype(np.float32) / 127.5 - 1.0


def to_uint8(images):
  """Decoder output in [-1, 1] -> uint8 pixels, as the official sampler does."""
  return jnp.clip((images + 1.0) * 127.5, 0, 255).astype(jnp.uint8)


def map_chunks(fn, x: np.ndarray, chunk: int = 64) -> np.ndarray:
  """fn (jitted) over host rows in chunks of `chunk`; the last chunk is padded with its last row, so
  fn compiles for one shape, and the padding is cut from the result. Chunks go in as numpy arrays:
  on many hosts, jit takes them as the same (replicated) value everywhere."""
  chunk = min(chunk, len(x))
  out = []
  for i in range(0, len(x), chunk):
    part = x[i:i + chunk]
    pad = chunk - len(part)
    out.append(np.asarray(fn(np.concatenate([part, np.repeat(part[-1:], pad, 0)]) if pad else part))[:len(part)])
  return np.concatenate(out)
