"""NIMA aesthetics (pyiqa's "nima": Inception-ResNet-v2 backbone, 10-bin score distribution), in torch.

The backbone is written here with timm's module names (conv2d_1a, mixed_5b, repeat, ..., conv2d_7b),
so pyiqa's weight files load as they are, without timm or torchvision (which the CPU torch builds we
target cannot import). Input: uint8 images, shorter side resized to 299, centre-cropped, normalised
with mean/std 0.5, as pyiqa does in eval mode.
Score = sum_i p_i * i over i = 1..10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicConv2d(nn.Module):
  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)
    self.relu = nn.ReLU()

  def forward(self, x):
    return self.relu(self.bn(self.conv(x)))


class Mixed5b(nn.Module):
  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(192, 96, 1)
    self.branch1 = nn.Sequential(BasicConv2d(192, 48, 1), BasicConv2d(48, 64, 5, padding=2))
    self.branch2 = nn.Sequential(BasicConv2d(192, 64, 1), BasicConv2d(64, 96, 3, padding=1),
                                 BasicConv2d(96, 96, 3, padding=1))
    self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                                 BasicConv2d(192, 64, 1))

  def forward(self, x):
    return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block35(nn.Module):
  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = scale
    self.branch0 = BasicConv2d(320, 32, 1)
    self.branch1 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 32, 3, padding=1))
    self.branch2 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 48, 3, padding=1),
                                 BasicConv2d(48, 64, 3, padding=1))
    self.conv2d = nn.Conv2d(128, 320, 1)
    self.relu = nn.ReLU()

  def forward(self, x):
    out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1))
    return self.relu(out * self.scale + x)


class Mixed6a(nn.Module):
  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(320, 384, 3, stride=2)
    self.branch1 = nn.Sequential(BasicConv2d(320, 256, 1), BasicConv2d(256, 256, 3, padding=1),
                                 BasicConv2d(256, 384, 3, stride=2))
    self.branch2 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Block17(nn.Module):
  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = scale
    self.branch0 = BasicConv2d(1088, 192, 1)
    self.branch1 = nn.Sequential(BasicConv2d(1088, 128, 1), BasicConv2d(128, 160, (1, 7), padding=(0, 3)),
                                 BasicConv2d(160, 192, (7, 1), padding=(3, 0)))
    self.conv2d = nn.Conv2d(384, 1088, 1)
    self.relu = nn.ReLU()

  def forward(self, x):
    out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1))
    return self.relu(out * self.scale + x)


class Mixed7a(nn.Module):
  def __init__(self):
    super().__init__()
    self.branch0 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 384, 3, stride=2))
    self.branch1 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, stride=2))
    self.branch2 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, padding=1),
                                 BasicConv2d(288, 320, 3, stride=2))
    self.branch3 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block8(nn.Module):
  def __init__(self, scale=1.0, no_relu=False):
    super().__init__()
    self.scale = scale
    self.branch0 = BasicConv2d(2080, 192, 1)
    self.branch1 = nn.Sequential(BasicConv2d(2080, 192, 1), BasicConv2d(192, 224, (1, 3), padding=(0, 1)),
                                 BasicConv2d(224, 256, (3, 1), padding=(1, 0)))
    self.conv2d = nn.Conv2d(448, 2080, 1)
    self.relu = None if no_relu else nn.ReLU()

  def forward(self, x):
    out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1)) * self.scale + x
    return out if self.relu is None else self.relu(out)


class InceptionResNetV2(nn.Module):
  """The convolutional trunk: (B, 3, 299, 299) -> (B, 1536, 8, 8)."""

  def __init__(self):
    super().__init__()
    self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
    self.conv2d_2a = BasicConv2d(32, 32, 3)
    self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
    self.maxpool_3a = nn.MaxPool2d(3, stride=2)
    self.conv2d_3b = BasicConv2d(64, 80, 1)
    self.conv2d_4a = BasicConv2d(80, 192, 3)
    self.maxpool_5a = nn.MaxPool2d(3, stride=2)
    self.mixed_5b = Mixed5b()
    self.repeat = nn.Sequential(*[Block35(0.17) for _ in range(10)])
    self.mixed_6a = Mixed6a()
    self.repeat_1 = nn.Sequential(*[Block17(0.10) for _ in range(20)])
    self.mixed_7a = Mixed7a()
    self.repeat_2 = nn.Sequential(*[Block8(0.20) for _ in range(9)])
    self.block8 = Block8(no_relu=True)
    self.conv2d_7b = BasicConv2d(2080, 1536, 1)

  def forward(self, x):
    for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
                 "mixed_5b", "repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b"):
      x = getattr(self, name)(x)
    return x


class NIMA(nn.Module):
  SIZE = 299

  def __init__(self):
    super().__init__()
    self.base_model = InceptionResNetV2()
    # pyiqa's head: Flatten, Dropout, Linear, Softmax (so its weights are classifier.2.*)
    self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(1536, 10), nn.Softmax(dim=-1))

  def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> mean opinion score in [1, 10]."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    # pyiqa's eval preprocessing: shorter side to 299 (bilinear, antialiased), centre crop 299, mean/std 0.5.
    h, w = x.shape[-2:]
    s = self.SIZE
    nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
    x = (x[..., top:top + s, left:left + s] - 0.5) / 0.5
    feats = F.adaptive_avg_pool2d(self.base_model(x), 1)
    dist = self.classifier(feats)
    return (dist * torch.arange(1, 11, dtype=dist.dtype)).sum(-1)


def load_nima(path: str | Path) -> NIMA:
  """pyiqa's NIMA weights (a state dict, possibly under 'params'), loaded strictly and safely."""
  state = torch.load(path, map_location="cpu", weights_only=True)
  state = state.get("params", state)
  model = NIMA()
  missing, unexpected = model.load_state_dict(state, strict=False)
  if missing or unexpected:
    raise ValueError(f"{path}: not a NIMA Inception-ResNet-v2 checkpoint (missing {missing[:5]}, "
                     f"unexpected {unexpected[:5]})")
  return model.eval()


def score(model: NIMA, images: list[np.ndarray], batch: int = 16) -> np.ndarray:
  """Scores of uint8 (H, W, 3) images; images of one size go through the network together."""
  out = np.zeros(len(images), np.float32)
  by_shape: dict[tuple, list[int]] = {}
  for i, x in enumerate(images):
    by_shape.setdefault(x.shape, []).append(i)
  with torch.no_grad():
    for idx in by_shape.values():
      for j in range(0, len(idx), batch):
        chunk = idx[j:j + batch]
        out[chunk] = model(torch.from_numpy(np.stack([images[i] for i in chunk]))).numpy()
  return out
