"""SASRec (Kang & McAuley 2018), the self-attentive sequential recommender, in Flax NNX.

Items embedded (tied with the output layer), learned positions, `layers` blocks of pre-norm causal
self-attention and a ReLU feed-forward, dropout. Trained on the training windows with the next-item
cross-entropy over the whole catalog at every position (the catalogs here are small enough for the
full softmax, which avoids the negative-sampling variance). All windows have the same length, so no
padding: a history of h items is read at position h - 1, exactly as a window's prefix in training.
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
  dim: int = 64
  layers: int = 2
  heads: int = 1
  dropout: float = 0.2
  lr: float = 1e-3
  weight_decay: float = 0.0
  epochs: int = 30
  batch_size: int = 128
  seed: int = 0


class Block(nnx.Module):
  def __init__(self, c: SASRecConfig, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(c.dim, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(c.heads, c.dim, dropout_rate=c.dropout, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(c.dim, rngs=rngs)
    self.ff1 = nnx.Linear(c.dim, c.dim, rngs=rngs)
    self.ff2 = nnx.Linear(c.dim, c.dim, rngs=rngs)
    self.drop = nnx.Dropout(c.dropout, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.drop(self.attn(self.norm1(x), mask=mask))
    return x + self.drop(self.ff2(self.drop(nnx.relu(self.ff1(self.norm2(x))))))


class SASRecModel(nnx.Module):
  def __init__(self, num_items: int, max_len: int, c: SASRecConfig, rngs: nnx.Rngs):
    self.items = nnx.Embed(num_items, c.dim, rngs=rngs)
    self.pos = nnx.Embed(max_len, c.dim, rngs=rngs)
    self.drop = nnx.Dropout(c.dropout, rngs=rngs)
    self.blocks = nnx.List([Block(c, rngs) for _ in range(c.layers)])
    self.norm = nnx.LayerNorm(c.dim, rngs=rngs)
    self.scale = c.dim ** 0.5

  def __call__(self, seq):
    """(B, T) item indices -> (B, T, num_items) next-item logits."""
    x = self.items(seq) * self.scale + self.pos(jnp.arange(seq.shape[1]))[None]
    x = self.drop(x)
    mask = nnx.make_causal_mask(seq)
    for b in self.blocks:
      x = b(x, mask)
    return self.norm(x) @ self.items.embedding[...].T


@nnx.jit
def _train_step(model, opt, seq):
  def loss_fn(m):
    logits = m(seq[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, seq[:, 1:]).mean()
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  opt.update(model, grads)
  return loss


@nnx.jit
def _last_logits(model, history):
  return model(history)[:, -1]


def spread_windows(windows: np.ndarray, users: np.ndarray, stride: int) -> np.ndarray:
  """Of each user's consecutive windows (sliding by `stride`), those that together cover every transition
  of the user's sequence once (and the last): overlapping windows would repeat each transition about
  length / stride times, the same data at several times the cost."""
  keep, prev_user, next_start, start = [], None, 0, 0
  for j, u in enumerate(users):
    if u != prev_user:
      if keep and keep[-1] != j - 1 and prev_user is not None:
        keep.append(j - 1)
      prev_user, next_start, start = u, 0, 0
    else:
      start += stride
    if start >= next_start:
      keep.append(j)
      next_start = start + windows.shape[1] - 1
  if len(users) and keep[-1] != len(users) - 1:
    keep.append(len(users) - 1)
  return windows[np.array(keep, int)]


class SASRec:
  name = "sasrec"

  def __init__(self, config: SASRecConfig = SASRecConfig(), stride: int = 1):
    self.c, self.stride = config, stride

  def fit(self, windows, users, num_items):
    c = self.c
    windows = spread_windows(windows, users, self.stride)
    self.model = SASRecModel(num_items, windows.shape[1], c, nnx.Rngs(params=c.seed, dropout=c.seed + 1))
    opt = nnx.Optimizer(self.model, optax.adamw(c.lr, b2=0.98, weight_decay=c.weight_decay), wrt=nnx.Param)
    rng = np.random.default_rng(c.seed)
    steps = max(1, len(windows) // c.batch_size)  # full batches only: one compiled shape
    bs = min(c.batch_size, len(windows))
    start, self.losses = time.time(), []
    self.model.train()
    for epoch in range(c.epochs):
      order = rng.permutation(len(windows))
      total = jnp.zeros(())
      for s in range(steps):
        total = total + _train_step(self.model, opt, jnp.asarray(windows[order[s * bs:(s + 1) * bs]]))
      self.losses.append(float(total) / steps)
      left = (time.time() - start) / (epoch + 1) * (c.epochs - epoch - 1)
      if epoch == 0 or (epoch + 1) % max(1, c.epochs // 5) == 0:
        logging.info("sasrec: epoch %d/%d loss %.4f, ETA %.0fs", epoch + 1, c.epochs, self.losses[-1], left)
    self.model.eval()
    return self

  def scores(self, history):
    return np.concatenate([np.asarray(_last_logits(self.model, jnp.asarray(history[i:i + 256])))
                           for i in range(0, len(history), 256)])
