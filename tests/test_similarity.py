"""The similarity library (pgen_jax.rewards.similarity) against torch's cosine_similarity and hand-computed
values: numpy inputs on the host (float64), jax inputs inside jit (float32); and the item cache."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from pgen_jax.rewards import similarity as S


def _cos100(a, b):
  """100 x torch cosine similarity along the last axis, broadcasting."""
  return 100.0 * F.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=-1).numpy()


def _arrays(seed=0, w=3, n=4, k=5, p=3, d=6):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(w, n, d)), rng.normal(size=(w, k, d)) * rng.uniform(0.5, 3, (w, k, 1)),
          rng.normal(size=(w, d)), rng.normal(size=(w, p, d)))


def _torch_reference(g, hist, target, future):
  unit = hist / np.linalg.norm(hist, axis=-1, keepdims=True)
  each_future = _cos100(g[:, :, None], future[:, None])   # (W, N, p)
  return {"target": _cos100(g, target[:, None]), "history": _cos100(g, unit.mean(1)[:, None]),
          "history_items": _cos100(g[:, :, None], hist[:, None]).mean(-1),
          "future_mean": each_future.mean(-1), "future_max": each_future.max(-1)}


def _library(g, hist, target, future):
  each_future = S.to_each(g, future)
  return {"target": S.to_reference(g, target), "history": S.to_history(g, hist),
          "history_items": S.to_each(g, hist).mean(-1), "future_mean": each_future.mean(-1),
          "future_max": each_future.max(-1)}


def test_formulas_on_numpy_equal_torch_cosines_in_float64():
  arrays = _arrays()
  ref = _torch_reference(*arrays)
  out = _library(*arrays)
  for name in ref:
    assert out[name].dtype == np.float64 and out[name].shape == (3, 4), name
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-10, atol=1e-10, err_msg=name)


def test_formulas_inside_jit_equal_torch_cosines():
  arrays = _arrays(seed=1)
  ref = _torch_reference(*arrays)
  out = jax.jit(_library)(*(jnp.asarray(a, jnp.float32) for a in arrays))
  for name in ref:
    assert isinstance(out[name], jax.Array), name
    np.testing.assert_allclose(np.asarray(out[name]), ref[name], atol=1e-4, err_msg=name)


def test_future_mean_and_max_by_hand():
  g = np.array([[[2.0, 0.0], [1.0, 1.0]]])                 # one row, two images
  future = np.array([[[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])
  r = 1 / np.sqrt(2)
  each = S.to_each(g, future)
  np.testing.assert_allclose(each, [[[100.0, 0.0, -100.0], [100 * r, 100 * r, -100 * r]]], atol=1e-12)
  np.testing.assert_allclose(each.mean(-1), [[0.0, 100 * r / 3]], atol=1e-12)
  np.testing.assert_allclose(each.max(-1), [[100.0, 100 * r]], atol=1e-12)


def test_cross_user_leaves_out_the_same_users_images():
  e = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  users = np.array([5, 5, 6, 7])
  r = 1 / np.sqrt(2)
  # image 0 and 1 (user 5, identical directions) never see each other: their 1.0 would count otherwise
  want = [(0 + r) / 2, (0 + r) / 2, (0 + 0 + r) / 3, (r + r + r) / 3]
  np.testing.assert_allclose(S.similarity_to_other_users(e, users), want, atol=1e-12)
  # pairs of different users: (0,2)=0 (0,3)=r (1,2)=0 (1,3)=r (2,3)=r
  np.testing.assert_allclose(float(S.cross_user_similarity(e, users)), 3 * r / 5, atol=1e-12)
  inside = jax.jit(S.similarity_to_other_users)(jnp.asarray(e, jnp.float32), jnp.asarray(users))
  np.testing.assert_allclose(np.asarray(inside), want, atol=1e-6)
  # one user only: nothing to compare with, 0 rather than a division by zero
  np.testing.assert_array_equal(S.similarity_to_other_users(e[:2], users[:2]), [0.0, 0.0])


def test_item_cache_encodes_each_item_once_and_returns_the_encoders_output():
  images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3)).astype(np.uint8)  # item i's image
  project = lambda x: x.reshape(len(x), -1).astype(np.float64) @ np.linspace(-1, 1, 48 * 3).reshape(48, 3)
  expected = project(images)  # each item's embedding, all encoded at once here
  calls, loads = [], []

  def encode(x):  # the stand-in encoder, recording each call's batch
    calls.append(len(x))
    return project(x)

  def load(idx):
    loads.append(list(idx))
    return images[idx]

  cache = S.ItemCache(encode, load)
  idx = np.array([[3, 1, 3], [7, 1, 2]])
  out = cache(idx)
  assert out.shape == (2, 3, 3) and calls == [4] and loads == [[1, 2, 3, 7]]  # one call, each item once
  np.testing.assert_allclose(out, expected[idx], rtol=1e-12)
  out = cache(np.array([7, 9, 3, 9]))  # only item 9 is new
  assert calls == [4, 1] and loads[-1] == [9]
  np.testing.assert_allclose(out, expected[[7, 9, 3, 9]], rtol=1e-12)
  cache(np.array([1, 2, 3]))
  assert calls == [4, 1]
