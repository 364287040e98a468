"""Random, Pop, ItemKNN and LastItem, fitted on the training windows.

Every recommender: fit(windows (W, L) item indices, users (W,), num_items), then scores(history (B, h))
-> (B, num_items); pgen_jax.recommenders.ranking.top_k turns scores into ranked lists. What a user
interacted with in training is the set of items in that user's training windows (windows overlap, so
an item counts once per user).
"""

from __future__ import annotations

import numpy as np


def user_item_matrix(windows: np.ndarray, users: np.ndarray, num_items: int) -> np.ndarray:
  """(U, I) 0/1: user u has item i in one of u's training windows."""
  _, row = np.unique(users, return_inverse=True)
  x = np.zeros((row.max() + 1 if len(row) else 0, num_items), np.float32)
  x[np.repeat(row, windows.shape[1]), windows.reshape(-1)] = 1.0
  return x


def popularity(windows: np.ndarray, users: np.ndarray, num_items: int) -> np.ndarray:
  """(I,) the number of training users who have each item: Pop's scores, and every ranking's tie-break."""
  return user_item_matrix(windows, users, num_items).sum(0)


class Random:
  """Uniform random scores, seeded per call order: a floor every other method must beat."""
  name = "random"

  def __init__(self, seed: int = 0):
    self.rng = np.random.default_rng(seed)

  def fit(self, windows, users, num_items):
    self.num_items = num_items
    return self

  def scores(self, history):
    return self.rng.random((len(history), self.num_items))


class Pop:
  """Training popularity: the number of training users who have the item."""
  name = "pop"

  def fit(self, windows, users, num_items):
    self.pop = popularity(windows, users, num_items)
    return self

  def scores(self, history):
    return np.tile(self.pop, (len(history), 1))


class ItemKNN:
  """Item-item cosine of the users' co-occurrence vectors, cos(i, j) = c_ij / sqrt(c_i c_j) (self excluded);
  a history's score for item j is the sum over its items i of cos(i, j)."""
  name = "itemknn"

  def fit(self, windows, users, num_items):
    x = user_item_matrix(windows, users, num_items)
    co = x.T @ x
    n = np.sqrt(np.diag(co))
    self.sim = co / np.maximum(n[:, None] * n[None, :], 1e-12)
    np.fill_diagonal(self.sim, 0.0)
    return self

  def scores(self, history):
    return self.sim[history].sum(1)


class LastItem:
  """The history's last item. Its own image is its first recommendation (`images`); as a ranked list,
  where the history is excluded, the items most co-occurring with it (ItemKNN on the last item alone)."""
  name = "lastitem"

  def fit(self, windows, users, num_items):
    self.knn = ItemKNN().fit(windows, users, num_items)
    return self

  def scores(self, history):
    return self.knn.sim[history[:, -1]]
