"""Flax DINOv2 / DINOv1 against transformers' Dinov2Model and ViTModel (tiny random, built here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T

from pgen_jax.rewards.hf import _bicubic_matrix, load_dino
from pgen_jax.models import make_mesh


def randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      p.copy_(1 + 0.2 * noise if ("norm" in name and name.endswith("weight")) else
              0.1 * noise if p.ndim <= 1 or "lambda" in name else
              noise if "token" in name or "position" in name else noise / np.sqrt(p[0].numel()))
  return model.eval()


def dinov2(image_size=28):
  return randomize(T.Dinov2Model(T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=3,
                                                image_size=image_size, patch_size=7, layerscale_value=0.5)), 1)


def dinov1():
  cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, image_size=28,
                    patch_size=7, layer_norm_eps=1e-6)
  return randomize(T.ViTModel(cfg, add_pooling_layer=True), 2)


def one_device():
  return make_mesh(devices=jax.devices()[:1])


def px(size, seed=0):
  return np.random.default_rng(seed).normal(size=(2, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("build", [dinov2, dinov1])
def test_cls_features_equal_transformers(tmp_path, build):
  hf = build()
  hf.save_pretrained(tmp_path)
  ours = load_dino(tmp_path, mesh=one_device())
  x = px(28)
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(x))
  ref = (out.pooler_output if isinstance(hf, T.Dinov2Model) else out.last_hidden_state[:, 0]).numpy()
  got = np.asarray(ours(jnp.asarray(x.transpose(0, 2, 3, 1))))
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_other_input_size_matches_transformers_interpolation(tmp_path):
  hf = dinov2(image_size=28)  # a 4x4 position grid; fed 42px (6x6) and 21px (3x3) images
  hf.save_pretrained(tmp_path)
  for size in (42, 21):
    ours = load_dino(tmp_path, mesh=one_device(), image_size=size)
    x = px(size, seed=size)
    with torch.no_grad():
      ref = hf(pixel_values=torch.tensor(x)).pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x.transpose(0, 2, 3, 1)))), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_in,n_out", [(4, 6), (37, 16), (5, 5)])
def test_bicubic_weights_equal_torch(n_in, n_out):
  x = torch.randn(1, 1, n_in, 1, dtype=torch.float64)
  ref = torch.nn.functional.interpolate(x, size=(n_out, 1), mode="bicubic", align_corners=False)[0, 0, :, 0]
  np.testing.assert_allclose(_bicubic_matrix(n_in, n_out) @ x[0, 0, :, 0].numpy(), ref.numpy(), atol=1e-12)
