"""Image operations inside jit: reward-model preprocessing and SSIM."""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocess(images_uint8, resize: int, crop: int, mean, std):
  """uint8 (B, H, W, 3) -> shortest side resized to `resize` (bicubic, antialiased, as PIL/torchvision),
  centre crop `crop`, scaled to [0, 1] and normalised: CLIP (resize = crop = 224) and DINO (256 -> 224)."""
  b, h, w, _ = images_uint8.shape
  scale = resize / min(h, w)
  nh, nw = max(resize, round(h * scale)), max(resize, round(w * scale))
  x = jax.image.resize(images_uint8.astype(jnp.float32) / 255.0, (b, nh, nw, 3), "bicubic", antialias=True)
  top, left = (nh - crop) // 2, (nw - crop) // 2
  x = jnp.clip(x[:, top:top + crop, left:left + crop], 0.0, 1.0)
  return (x - jnp.asarray(mean)) / jnp.asarray(std)


def ssim(a_uint8, b_uint8):
  """Mean SSIM of uint8 images (B, H, W, 3) with data range 255 (11x11 Gaussian window, sigma 1.5)."""
  return dm_pix.ssim(a_uint8.astype(jnp.float32), b_uint8.astype(jnp.float32), max_val=255.0)
