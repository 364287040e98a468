"""The configured recommenders, fitted on the prepared store's training windows."""

from __future__ import annotations

import numpy as np
from absl import logging

from pgen_jax.data.pipeline import spec_from_config, store_dir
from pgen_jax.data.store import builders
from pgen_jax.recommenders.baselines import ItemKNN, LastItem, Pop, Random
from pgen_jax.recommenders.sasrec import SASRec, SASRecConfig

NAMES = ("random", "pop", "itemknn", "lastitem", "sasrec")


def training_windows(cfg) -> tuple[np.ndarray, np.ndarray, int]:
  """(windows (W, L) item indices, users (W,), number of catalog items) of the store's training split."""
  items_b, windows_b = builders(spec_from_config(cfg), store_dir(cfg))
  num_items = items_b.info.splits["items"].num_examples
  if "train" not in windows_b.info.splits:
    raise ValueError("eval.recommenders: the prepared store has no training windows to fit them on")
  src = windows_b.as_data_source(split="train")
  rows = [src[i] for i in range(len(src))]
  return (np.stack([r["items"] for r in rows]).astype(np.int32), np.array([r["user"] for r in rows], np.int64),
          num_items)


def make(name: str, sasrec: dict | None = None, seed: int = 0, stride: int = 1):
  if name not in NAMES:
    raise ValueError(f"eval.recommenders: {name!r} unknown; choose from {NAMES}")
  if name == "sasrec":
    return SASRec(SASRecConfig(**dict(sasrec or {})), stride)
  return Random(seed) if name == "random" else {"pop": Pop, "itemknn": ItemKNN, "lastitem": LastItem}[name]()


def fit_all(names, windows, users, num_items, sasrec: dict | None = None, seed: int = 0, stride: int = 1) -> dict:
  out = {}
  for name in names:
    logging.info("fitting recommender %s on %d training windows, %d items", name, len(windows), num_items)
    out[name] = make(name, sasrec, seed, stride).fit(windows, users, num_items)
  return out
