"""The evaluated windows as item indices, and the catalog's images, texts and embeddings by index.

Every row of the comparison is measured against the same items: history, target and future as the
items' generation-target crops (what a generated image is compared with), so a recommender's images
(catalog items) and a generator's samples meet the same references.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pgen_jax.data.pipeline import spec_from_config, store_dir
from pgen_jax.data.store import builders
from pgen_jax.rewards.similarity import ItemCache


@dataclasses.dataclass
class EvalWindows:
  users: np.ndarray     # (W,)
  items: np.ndarray     # (W, L) item indices: history (h), target, future (p)
  history_len: int

  @property
  def history(self):
    return self.items[:, :self.history_len]

  @property
  def target(self):
    return self.items[:, self.history_len]

  @property
  def future(self):
    return self.items[:, self.history_len + 1:]


class Catalog:
  """Item records of the prepared store by index, with cached images and embeddings."""

  def __init__(self, cfg):
    items_b, _ = builders(spec_from_config(cfg), store_dir(cfg))
    self._src = items_b.as_data_source(split="items")
    rows = [self._src[i] for i in range(len(self._src))] if len(self._src) <= 4096 else None
    self.ids = np.array([r["item_id"] for r in rows] if rows else [self._src[i]["item_id"] for i in range(len(self))])
    self._index = {int(t): i for i, t in enumerate(self.ids)}
    self._images = {i: r["target"] for i, r in enumerate(rows)} if rows else {}
    self._texts = {i: _text(r["text"]) for i, r in enumerate(rows)} if rows else {}
    self._emb: dict[str, ItemCache] = {}

  def __len__(self):
    return len(self._src)

  def index(self, item_ids) -> np.ndarray:
    return np.array([[self._index[int(t)] for t in row] for row in np.asarray(item_ids)], np.int64)

  def _load(self, i: int):
    r = self._src[int(i)]
    self._images[int(i)], self._texts[int(i)] = r["target"], _text(r["text"])

  def images(self, idx) -> np.ndarray:
    """uint8 (*idx.shape, S, S, 3) generation-target crops."""
    idx = np.asarray(idx)
    for i in np.unique(idx):
      if int(i) not in self._images:
        self._load(i)
    flat = np.stack([self._images[int(i)] for i in idx.reshape(-1)])
    return flat.reshape(*idx.shape, *flat.shape[1:])

  def texts(self, idx) -> list[str]:
    for i in np.unique(idx):
      if int(i) not in self._texts:
        self._load(i)
    return [self._texts[int(i)] for i in np.asarray(idx).reshape(-1)]

  def embeddings(self, kind: str, fn, idx) -> np.ndarray:
    """fn(uint8 images) -> (n, D) embeddings of the items `idx`, each item computed once per run (per kind)."""
    return self._emb.setdefault(kind, ItemCache(fn, self.images))(idx)


def _text(t) -> str:
  return t.decode("utf-8") if isinstance(t, bytes) else str(t)
