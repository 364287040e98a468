"""LPIPS (VGG16 variant) in Flax NNX: a perceptual distance for metrics and rewards.

VGG16's convolutional features (torchvision's `features.N` names) at relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3; each map is unit-normalised over channels, the squared difference weighted by a
learned 1x1 head (`linK.model.1`, the lpips package's names), averaged over space, summed over layers.
Inputs are images in [-1, 1]; lower is more similar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# (torchvision index of each conv, output channels); "M" is a 2x2 max-pool.
VGG16 = [(0, 64), (2, 64), "M", (5, 128), (7, 128), "M", (10, 256), (12, 256), (14, 256), "M",
         (17, 512), (19, 512), (21, 512), "M", (24, 512), (26, 512), (28, 512)]
VGG16_OUT = [layer for layer in VGG16 if layer != "M"]
TAPS = (2, 7, 14, 21, 28)  # the convs whose ReLU outputs LPIPS compares
# numpy, not jnp: a jax array made at import starts the XLA backend, and a multi-host job
# (pgen_jax.distributed) must join jax.distributed before that
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class Head(nnx.Module):
  def __init__(self, channels: int, rngs, **kw):
    self.model = nnx.Dict({"1": nnx.Conv(channels, 1, (1, 1), use_bias=False, rngs=rngs, **kw)})

  def __call__(self, x):
    return self.model["1"](x)


class LPIPS(nnx.Module):
  def __init__(self, rngs: nnx.Rngs | None = None, *, dtype=None, param_dtype=jnp.float32):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    convs, c = {}, 3
    for layer in VGG16:
      if layer != "M":
        i, out = layer
        convs[str(i)] = nnx.Conv(c, out, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs, **kw)
        c = out
    self.features = nnx.Dict(convs)
    for k, tap in enumerate(TAPS):
      setattr(self, f"lin{k}", Head(dict(VGG16_OUT)[tap], rngs, **kw))

  def _taps(self, x):
    out = []
    for layer in VGG16:
      if layer == "M":
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = jax.nn.relu(self.features[str(layer[0])](x))
        if layer[0] in TAPS:
          out.append(x)
    return out

  def unit_maps(self, x):
    """The five unit-normalised (over channels) fp32 maps of images x (B, H, W, 3) in [-1, 1] that the
    distance compares: a reference's computed once serve all the images compared with it."""
    out = []
    for t in self._taps((x - SHIFT) / SCALE):
      t = t.astype(jnp.float32)
      out.append(t / (jnp.sqrt(jnp.sum(t * t, -1, keepdims=True)) + 1e-10))
    return out

  def distance(self, fa, fb):
    """Distance of `unit_maps` outputs, their leading axes broadcast: (..., H, W, C) maps -> (...) fp32."""
    total = 0.0
    for k, (x, y) in enumerate(zip(fa, fb)):
      total = total + getattr(self, f"lin{k}")((x - y) ** 2).astype(jnp.float32).mean(axis=(-3, -2, -1))
    return total

  def __call__(self, a, b):
    """Distance per image pair: a, b (B, H, W, 3) in [-1, 1] -> (B,) fp32."""
    return self.distance(self.unit_maps(a), self.unit_maps(b))
