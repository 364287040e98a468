"""Building blocks shared by the Janus towers. Norms always compute in fp32, whatever the params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def gelu(x):
  # Janus uses the exact (erf) GELU everywhere, as torch's nn.GELU() default.
  return jax.nn.gelu(x, approximate=False)


# transformers' ACT2FN names that a Janus config may carry.
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    # Cast back before the scale, as LLaMA's reference does.
    return self.scale[...].astype(dtype) * x.astype(dtype)


class LayerNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


class GroupNorm(nnx.Module):
  """GroupNorm(32) over NHWC activations."""

  def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6, *, param_dtype=jnp.float32):
    self.groups, self.eps = groups, eps
    self.scale = nnx.Param(jnp.ones((channels,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))

  def __call__(self, x):
    dtype = x.dtype
    b, h, w, c = x.shape
    g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


def linear(din: int, dout: int, rngs: nnx.Rngs, *, bias: bool = True, dtype=None,
           param_dtype=jnp.float32) -> nnx.Linear:
  return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                    kernel_init=nnx.initializers.normal(0.02))


class MlpAligner(nnx.Module):
  """Linear, then (GELU, Linear) x (depth-1): Janus's aligner and generation aligner."""

  def __init__(self, din: int, dout: int, depth: int, rngs: nnx.Rngs, *, act: str = "gelu", dtype=None,
               param_dtype=jnp.float32):
    self.act = act
    self.fc1 = linear(din, dout, rngs, dtype=dtype, param_dtype=param_dtype)
    self.hidden_layers = nnx.List([linear(dout, dout, rngs, dtype=dtype, param_dtype=param_dtype)
                                   for _ in range(depth - 1)])

  def __call__(self, x):
    x = self.fc1(x)
    for layer in self.hidden_layers:
      x = layer(ACTIVATIONS[self.act](x))
    return x


class MLP(nnx.Module):
  """fc1, activation, fc2: the transformer MLP of SigLIP, CLIP and DINOv2."""

  def __init__(self, dim: int, hidden: int, act: str, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    self.act = act
    self.fc1 = linear(dim, hidden, rngs, dtype=dtype, param_dtype=param_dtype)
    self.fc2 = linear(hidden, dim, rngs, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


def attention(q, k, v, mask=None):
  """Softmax attention in fp32. q: (B,T,H,D), k/v: (B,S,KVH,D) with H % KVH == 0 (GQA).

  mask: boolean, broadcastable to (B, H, T, S); True means attend.
  """
  b, t, h, d = q.shape
  kvh = k.shape[2]
  q = q.reshape(b, t, kvh, h // kvh, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * (d ** -0.5)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, h, t, k.shape[1])).reshape(b, kvh, h // kvh, t, k.shape[1])
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, h, d)
