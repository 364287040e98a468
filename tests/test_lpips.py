"""LPIPS-VGG against the published formula written in torch (torchvision's VGG16 layout, the lpips
package's scaling layer, unit-normalised features and 1x1 heads); weights random, in their files'
real key layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn

from pgen_jax.rewards.hf import load_lpips
from pgen_jax.models import make_mesh


def vgg16_features():
  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
  layers, c = [], 3
  for v in cfg:
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
      c = v
  return nn.Sequential(*layers)


def reference(features, heads, a, b):
  shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
  scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
  cuts = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]

  def taps(x):
    x, out = (x - shift) / scale, []
    for s, e in cuts:
      for layer in features[s:e]:
        x = layer(x)
      out.append(x)
    return out

  total = 0
  for k, (x, y) in enumerate(zip(taps(a), taps(b))):
    x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    total = total + nn.functional.conv2d((x - y) ** 2, heads[f"lin{k}.model.1.weight"]).mean((2, 3))
  return total[:, 0]


def write_random_lpips(folder):
  """Random VGG16 features and LPIPS heads in their files' real layouts: folder/vgg16.pth (torchvision's
  keys) and folder/vgg.pth (lpips'); returns the torch modules for `reference`."""
  torch.manual_seed(0)
  features = vgg16_features().eval()
  torch.save({f"features.{k}": v for k, v in features.state_dict().items()} | {"classifier.0.weight": torch.zeros(2, 2)},
             folder / "vgg16.pth")
  heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
  torch.save(heads, folder / "vgg.pth")
  return features, heads


def test_lpips_equals_the_torch_formula(tmp_path):
  features, heads = write_random_lpips(tmp_path)
  ours = load_lpips(tmp_path / "vgg16.pth", tmp_path / "vgg.pth", mesh=make_mesh(devices=jax.devices()[:1]))
  rng = np.random.default_rng(0)
  a = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
  with torch.no_grad():
    ref = reference(features, heads, torch.tensor(a).permute(0, 3, 1, 2), torch.tensor(b).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(ours(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
  assert np.asarray(ours(jnp.asarray(a), jnp.asarray(a))).max() < 1e-6  # identical images: distance 0
