"""The VQ-16 image tokenizer (LlamaGen) of Janus, channels-last.

encode: pixels in [-1, 1] (B, H, W, 3) -> tokens (B, (H/16)*(W/16)) in raster order, with the original
L2-normalised nearest-code rule. decode: tokens -> pixels (B, H, W, 3), roughly in [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgen_jax.models.config import VQConfig
from pgen_jax.models.layers import GroupNorm


def conv(din: int, dout: int, k: int, rngs: nnx.Rngs, *, stride: int = 1, pad: int | None = None,
         dtype=None, param_dtype=jnp.float32) -> nnx.Conv:
  pad = k // 2 if pad is None else pad
  return nnx.Conv(din, dout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def swish(x):
  return x * jax.nn.sigmoid(x)


def l2_normalize(x, eps: float = 1e-12):
  # torch.nn.functional.normalize: x / max(||x||, eps)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class ResnetBlock(nnx.Module):
  def __init__(self, din: int, dout: int, rngs: nnx.Rngs, **kw):
    self.norm1 = GroupNorm(din, param_dtype=kw.get("param_dtype", jnp.float32))
    self.conv1 = conv(din, dout, 3, rngs, **kw)
    self.norm2 = GroupNorm(dout, param_dtype=kw.get("param_dtype", jnp.float32))
    self.conv2 = conv(dout, dout, 3, rngs, **kw)
    self.nin_shortcut = conv(din, dout, 1, rngs, **kw) if din != dout else None

  def __call__(self, x):
    h = self.conv1(swish(self.norm1(x)))
    h = self.conv2(swish(self.norm2(h)))
    return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nnx.Module):
  def __init__(self, c: int, rngs: nnx.Rngs, **kw):
    self.norm = GroupNorm(c, param_dtype=kw.get("param_dtype", jnp.float32))
    self.q, self.k, self.v, self.proj_out = (conv(c, c, 1, rngs, **kw) for _ in range(4))

  def __call__(self, x):
    b, h, w, c = x.shape
    y = self.norm(x)
    q, k, v = (f(y).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (c ** -0.5)
    out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    return x + self.proj_out(out.reshape(b, h, w, c))


class Downsample(nnx.Module):
  def __init__(self, c: int, rngs: nnx.Rngs, **kw):
    self.conv = conv(c, c, 3, rngs, stride=2, pad=0, **kw)

  def __call__(self, x):
    # Asymmetric padding (bottom/right only), as the original.
    return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
  def __init__(self, c: int, rngs: nnx.Rngs, **kw):
    self.conv = conv(c, c, 3, rngs, **kw)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class MidBlock(nnx.Module):
  def __init__(self, c: int, rngs: nnx.Rngs, **kw):
    self.block_1 = ResnetBlock(c, c, rngs, **kw)
    self.attn_1 = AttnBlock(c, rngs, **kw)
    self.block_2 = ResnetBlock(c, c, rngs, **kw)

  def __call__(self, x):
    return self.block_2(self.attn_1(self.block_1(x)))


class Level(nnx.Module):
  """One resolution: res blocks, attention after each block (lowest resolution only), resampling."""

  def __init__(self, din: int, dout: int, n_blocks: int, with_attn: bool, rngs, *, downsample=None,
               upsample=None, **kw):
    self.block = nnx.List([ResnetBlock(din if i == 0 else dout, dout, rngs, **kw) for i in range(n_blocks)])
    self.attn = nnx.List([AttnBlock(dout, rngs, **kw) for _ in range(n_blocks)] if with_attn else [])
    self.downsample, self.upsample = downsample, upsample  # at most one is set

  def __call__(self, x):
    for i, block in enumerate(self.block):
      x = block(x)
      if len(self.attn):
        x = self.attn[i](x)
    for resample in (self.downsample, self.upsample):
      if resample is not None:
        x = resample(x)
    return x


class Encoder(nnx.Module):
  def __init__(self, cfg: VQConfig, rngs: nnx.Rngs, **kw):
    ch, mult = cfg.base_channels, cfg.channel_multiplier
    n = len(mult)
    self.conv_in = conv(cfg.in_channels, ch, 3, rngs, **kw)
    levels = []
    for i in range(n):
      din, dout = ch * (1, *mult)[i], ch * mult[i]
      last = i == n - 1
      levels.append(Level(din, dout, cfg.num_res_blocks, last, rngs,
                          downsample=None if last else Downsample(dout, rngs, **kw), **kw))
    self.down = nnx.List(levels)
    c = ch * mult[-1]
    self.mid = MidBlock(c, rngs, **kw)
    self.norm_out = GroupNorm(c, param_dtype=kw.get("param_dtype", jnp.float32))
    self.conv_out = conv(c, cfg.latent_channels, 3, rngs, **kw)

  def __call__(self, x):
    x = self.conv_in(x)
    for level in self.down:
      x = level(x)
    return self.conv_out(swish(self.norm_out(self.mid(x))))


class Decoder(nnx.Module):
  def __init__(self, cfg: VQConfig, rngs: nnx.Rngs, **kw):
    ch, mult = cfg.base_channels, cfg.channel_multiplier
    n = len(mult)
    c = ch * mult[-1]
    self.conv_in = conv(cfg.latent_channels, c, 3, rngs, **kw)
    self.mid = MidBlock(c, rngs, **kw)
    levels = []
    for j, i in enumerate(reversed(range(n))):  # up[0] is the lowest resolution
      dout = ch * mult[i]
      levels.append(Level(c, dout, cfg.num_res_blocks + 1, j == 0, rngs,
                          upsample=Upsample(dout, rngs, **kw) if i != 0 else None, **kw))
      c = dout
    self.up = nnx.List(levels)
    self.norm_out = GroupNorm(c, param_dtype=kw.get("param_dtype", jnp.float32))
    self.conv_out = conv(c, cfg.out_channels, 3, rngs, **kw)

  def __call__(self, x):
    x = self.mid(self.conv_in(x))
    for level in self.up:
      x = level(x)
    return self.conv_out(swish(self.norm_out(x)))


class Quantizer(nnx.Module):
  def __init__(self, cfg: VQConfig, rngs: nnx.Rngs, *, param_dtype=jnp.float32):
    self.embedding = nnx.Embed(cfg.num_embeddings, cfg.embed_dim, param_dtype=param_dtype, rngs=rngs)

  def codes(self, z):
    """Nearest code after L2-normalising both z (B, h, w, e) and the codebook -> (B, h*w) int32."""
    b, h, w, e = z.shape
    z = l2_normalize(z.reshape(b, h * w, e).astype(jnp.float32))
    book = l2_normalize(self.embedding.embedding[...].astype(jnp.float32))
    dist = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(book * book, -1)
            - 2.0 * jnp.einsum("bte,ne->btn", z, book))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)

  def lookup(self, tokens, grid: int):
    b = tokens.shape[0]
    book = l2_normalize(self.embedding.embedding[...].astype(jnp.float32))
    return book[tokens].reshape(b, grid, grid, -1)


class VQModel(nnx.Module):
  def __init__(self, cfg: VQConfig, grid: int, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.grid, self.dtype = grid, dtype
    self.encoder = Encoder(cfg, rngs, **kw)
    self.quant_conv = conv(cfg.latent_channels, cfg.embed_dim, 1, rngs, **kw)
    self.quantize = Quantizer(cfg, rngs, param_dtype=param_dtype)
    self.post_quant_conv = conv(cfg.embed_dim, cfg.latent_channels, 1, rngs, **kw)
    self.decoder = Decoder(cfg, rngs, **kw)

  def encode(self, pixel_values):
    x = pixel_values if self.dtype is None else pixel_values.astype(self.dtype)
    return self.quantize.codes(self.quant_conv(self.encoder(x)))

  def decode(self, tokens):
    if tokens.ndim != 2 or tokens.shape[1] != self.grid * self.grid:
      raise ValueError(f"image tokens must have shape (batch, {self.grid * self.grid}), got {tokens.shape}")
    z = self.quantize.lookup(tokens, self.grid)
    if self.dtype is not None:
      z = z.astype(self.dtype)
    return self.decoder(self.post_quant_conv(z))
