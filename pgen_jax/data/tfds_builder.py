"""The TFDS builder of the prepared store (see store.py, plan.py); a module of its own so that the class is
defined, and registered with TFDS, once per process (grain workers included)."""

from __future__ import annotations

import logging

import numpy as np
import tensorflow_datasets as tfds

from pgen_jax.data import histories, images
from pgen_jax.data.plan import VERSION, DataSpec, Plan, make_plan


class PgenHistories(tfds.core.GeneratorBasedBuilder):
  """User histories of item images and texts (pgen_jax)."""
  VERSION = tfds.core.Version(VERSION)
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Raw MovieLens / PixelRec files and their images (data.root, data.images)."

  def __init__(self, *, spec: DataSpec, part: str, plan: Plan | None = None, **kw):
    self.spec, self.part, self._plan = spec, part, plan
    super().__init__(config=tfds.core.BuilderConfig(name=f"{part}-{spec.fingerprint()}", version=VERSION), **kw)

  def _info(self):
    s, length = self.spec.image_size, self.spec.windows.length
    if self.part == "items":
      feats = {"index": np.int64, "item_id": np.int64, "text": tfds.features.Text(),
               "target": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding="bytes"),
               "understanding": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding="bytes")}
    else:
      feats = {"user": np.int64, "items": tfds.features.Tensor(shape=(length,), dtype=np.int64)}
    # Record order is the generation order: item records are addressed by index.
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(feats), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    plan = self._plan or make_plan(self.spec)
    if self.part == "items":
      return {"items": self._generate_examples(plan, "items")}
    return {split: self._generate_examples(plan, split) for split in histories.SPLITS
            if len(plan.windows.users[split])}

  def _generate_examples(self, plan: Plan, split: str):
    return self._items(plan) if split == "items" else self._windows(plan, split, plan.index_of())

  def _items(self, plan: Plan):
    s = self.spec.image_size
    for i, (item, text, path) in enumerate(zip(plan.item_ids, plan.texts, plan.paths)):
      img = images.load_rgb(path)
      yield i, {"index": i, "item_id": item, "text": text, "target": images.generation_target(img, s),
                "understanding": images.understanding_input(img, s)}
      if (i + 1) % 500 == 0:
        logging.info("wrote %d/%d items", i + 1, len(plan.item_ids))

  def _windows(self, plan: Plan, split: str, index: dict[int, int]):
    for j, (user, items) in enumerate(zip(plan.windows.users[split], plan.windows.items[split])):
      yield j, {"user": int(user), "items": np.array([index[int(i)] for i in items], np.int64)}

