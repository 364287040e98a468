"""Reward terms against torch references (transformers CLIP/DINOv2, pytorch_msssim) and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pytorch_msssim
import torch

from pgen_jax.models import make_mesh
from pgen_jax.rewards.hf import load_clip, load_dino, load_lpips
from pgen_jax.rewards.compose import RunningScale, RewardConfig, combine, in_jit_terms
from pgen_jax.rewards.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, preprocess, ssim
from test_clip import hf_clip
from test_dino import dinov2
from test_lpips import reference as lpips_reference, vgg16_features


def test_ssim_equals_pytorch_msssim():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
  ref = pytorch_msssim.ssim(torch.tensor(a).permute(0, 3, 1, 2).float(), torch.tensor(b).permute(0, 3, 1, 2).float(),
                            data_range=255, size_average=False).numpy()
  np.testing.assert_allclose(np.asarray(ssim(jnp.asarray(a), jnp.asarray(b))), ref, atol=1e-5)


def cos100(a, b):
  a, b = a / np.linalg.norm(a, axis=-1, keepdims=True), b / np.linalg.norm(b, axis=-1, keepdims=True)
  return 100 * (a * b).sum(-1)


NAMES = ("clip_history", "clip_target", "clip_future", "clip_text", "dino_history", "dino_target", "dino_future",
         "ssim_target", "lpips_target")


def reward_models(tmp_path):
  """Small random transformers CLIP / DINOv2 and torchvision VGG16 + LPIPS heads, and the same loaded in JAX."""
  mesh = make_mesh(devices=jax.devices()[:1])
  hc, hd = hf_clip("gelu", 98), dinov2(28)
  hc.save_pretrained(tmp_path / "clip")
  hd.save_pretrained(tmp_path / "dino")
  clip, dino = load_clip(tmp_path / "clip", mesh=mesh), load_dino(tmp_path / "dino", mesh=mesh)
  torch.manual_seed(1)
  vgg = vgg16_features().eval()
  heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
  torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, tmp_path / "vgg16.pth")
  torch.save(heads, tmp_path / "lin.pth")
  lpips = load_lpips(tmp_path / "vgg16.pth", tmp_path / "lin.pth", mesh=mesh)
  return (hc, hd, vgg, heads), dict(clip=clip, dino=dino, lpips=lpips)


def references(rng, n, k, p):
  """Random uint8 history (n, k), target, future (n, p) images (32px) and CLIP token ids (n, 16) of n rows."""
  hist = rng.integers(0, 256, (n, k, 32, 32, 3)).astype(np.uint8)
  target = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
  future = rng.integers(0, 256, (n, p, 32, 32, 3)).astype(np.uint8)
  text = rng.integers(1, 90, (n, 16))
  text[:, 6] = 98
  text[:, 7:] = 0
  return hist, target, future, text


def torch_terms(torch_models, gen, hist, target, future, text):
  """Every in-jit term by the torch models (transformers, torchvision, pytorch_msssim), one reference set
  per generated image: all arrays have gen's N rows."""
  hc, hd, vgg, heads = torch_models
  n, k, p = hist.shape[0], hist.shape[1], future.shape[1]

  def torch_in(x, size, crop, mean, std):  # the same preprocessing, then torch models
    return torch.tensor(np.asarray(preprocess(jnp.asarray(x), size, crop, mean, std))).permute(0, 3, 1, 2)

  with torch.no_grad():
    ci = lambda x: hc.get_image_features(pixel_values=torch_in(x, 30, 30, CLIP_MEAN, CLIP_STD)).pooler_output.numpy()
    di = lambda x: hd(pixel_values=torch_in(x, 30, 28, IMAGENET_MEAN, IMAGENET_STD)).pooler_output.numpy()
    g, h, t, f = ci(gen), ci(hist.reshape(-1, 32, 32, 3)).reshape(n, k, -1), ci(target), ci(future.reshape(-1, 32, 32, 3))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    ref = {"clip_history": cos100(g, unit(h).mean(1)), "clip_target": cos100(g, t),
           "clip_future": cos100(g[:, None], f.reshape(n, p, -1)).mean(1),
           "clip_text": cos100(g, hc.get_text_features(input_ids=torch.tensor(text)).pooler_output.numpy())}
    g, h, t, f = di(gen), di(hist.reshape(-1, 32, 32, 3)).reshape(n, k, -1), di(target), di(future.reshape(-1, 32, 32, 3))
    ref.update({"dino_history": cos100(g, unit(h).mean(1)), "dino_target": cos100(g, t),
                "dino_future": cos100(g[:, None], f.reshape(n, p, -1)).mean(1)})
    ref["ssim_target"] = pytorch_msssim.ssim(torch.tensor(gen).permute(0, 3, 1, 2).float(),
                                             torch.tensor(target).permute(0, 3, 1, 2).float(), data_range=255,
                                             size_average=False).numpy()
    signed = lambda x: torch.tensor(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    ref["lpips_target"] = -lpips_reference(vgg, heads, signed(gen), signed(target)).numpy()
  return ref


def test_terms_equal_torch_references(tmp_path):
  torch_models, models = reward_models(tmp_path)
  rng = np.random.default_rng(0)
  n, k, p = 3, 2, 2
  gen = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
  hist, target, future, text = references(rng, n, k, p)
  names = NAMES
  cfg = RewardConfig(weights=tuple((t, 1.0) for t in names), clip_size=30, dino_resize=30, dino_crop=28)
  terms = in_jit_terms(cfg, jnp.asarray(gen), history=jnp.asarray(hist), target=jnp.asarray(target),
                       future=jnp.asarray(future), target_text=jnp.asarray(text), **models)
  ref = torch_terms(torch_models, gen, hist, target, future, text)
  assert set(terms) == set(names)
  for name in names:
    np.testing.assert_allclose(np.asarray(terms[name]), ref[name], atol=2e-3, err_msg=name)


class _Rows:
  """An encoder that records how many images each call is given."""

  def __init__(self, module):
    self.module, self.rows = module, []

  def __call__(self, x):
    self.rows.append(x.shape[0])
    return self.module(x)

  def get_image_features(self, x):
    self.rows.append(x.shape[0])
    return self.module.get_image_features(x)

  def get_text_features(self, ids):
    return self.module.get_text_features(ids)


def test_references_once_per_prompt_equal_per_sample_torch_terms(tmp_path):
  """B prompts' references once, beside their B x G samples (a prompt's adjacent): every term equals the
  torch models' with each prompt's references repeated for each of its samples (the rewards before)."""
  torch_models, models = reward_models(tmp_path)
  rng = np.random.default_rng(1)
  b, g, k, p = 3, 2, 2, 2
  gen = rng.integers(0, 256, (b * g, 32, 32, 3)).astype(np.uint8)
  hist, target, future, text = references(rng, b, k, p)  # distinct for each prompt
  cfg = RewardConfig(weights=tuple((t, 1.0) for t in NAMES), clip_size=30, dino_resize=30, dino_crop=28)
  clip, dino = _Rows(models["clip"]), _Rows(models["dino"])
  terms = in_jit_terms(cfg, jnp.asarray(gen), history=jnp.asarray(hist), target=jnp.asarray(target),
                       future=jnp.asarray(future), target_text=jnp.asarray(text), clip=clip, dino=dino,
                       lpips=models["lpips"])
  each = lambda x: np.repeat(x, g, 0)  # prompt b's references for rows b*G .. b*G+G-1
  ref = torch_terms(torch_models, gen, each(hist), each(target), each(future), each(text))
  assert set(terms) == set(NAMES)
  for name in NAMES:
    assert terms[name].shape == (b * g,)
    np.testing.assert_allclose(np.asarray(terms[name]), ref[name], atol=2e-3, err_msg=name)
  # each distinct image through each encoder once, in one call: the generated and every prompt's references
  assert clip.rows == dino.rows == [b * g + b * (k + 1 + p)]
  # the samples of one prompt do differ, so a prompt-to-sample mix-up would show
  assert np.abs(np.diff(ref["clip_target"].reshape(b, g), axis=1)).min() > 1e-2


def test_references_must_be_one_row_per_prompt():
  cfg = RewardConfig(weights=(("ssim_target", 1.0),))
  gen = jnp.zeros((6, 16, 16, 3), jnp.uint8)
  with pytest.raises(ValueError, match="divides the 6 generated"):
    in_jit_terms(cfg, gen, target=jnp.zeros((4, 16, 16, 3), jnp.uint8))
  with pytest.raises(ValueError, match="one row count"):
    in_jit_terms(cfg, gen, target=jnp.zeros((3, 16, 16, 3), jnp.uint8), history=jnp.zeros((2, 1, 16, 16, 3), jnp.uint8))


def test_combine_by_hand():
  terms = {"clip_history": jnp.array([1.0, 2.0, 3.0]), "nima": jnp.array([5.0, 5.0, 8.0])}
  raw = RewardConfig(weights=(("clip_history", 2.0), ("nima", 0.5)))
  np.testing.assert_allclose(np.asarray(combine(raw, terms)), [4.5, 6.5, 10.0])
  # divided by their spreads, not centred: the level stays
  np.testing.assert_allclose(np.asarray(combine(raw, terms, {"clip_history": 2.0, "nima": 0.25})),
                             [2 * 0.5 + 0.5 * 20, 2 * 1 + 0.5 * 20, 2 * 1.5 + 0.5 * 32])
  with pytest.raises(ValueError, match="profile"):
    combine(RewardConfig(weights=(("profile", 1.0),)), terms)
  with pytest.raises(ValueError, match="unknown"):
    RewardConfig(weights=(("aesthetics", 1.0),))
  with pytest.raises(ValueError, match="normalize"):
    RewardConfig(normalize="batch")  # the per-batch z-score is gone


def test_running_scale_is_the_within_group_spread():
  scale = RunningScale(decay=0.5)
  # two groups of two: within-group stds 1 and 3 -> 2; the between-group offset (100) does not count
  first = scale.update({"clip_history": np.array([0.0, 2.0, 100.0, 106.0])}, 2)
  assert first == {"clip_history": pytest.approx(2.0)}
  second = scale.update({"clip_history": np.array([0.0, 8.0, 5.0, 5.0])}, 2)  # stds 4 and 0 -> 2, then EMA
  assert second == {"clip_history": pytest.approx(0.5 * 2.0 + 0.5 * 2.0)}
  third = scale.update({"clip_history": np.array([0.0, 12.0, 0.0, 12.0])}, 2)  # 6
  assert third == {"clip_history": pytest.approx(0.5 * 2.0 + 0.5 * 6.0)}
  fresh = RunningScale(decay=0.5)
  fresh.restore(scale.state())
  assert fresh.spread == scale.spread
