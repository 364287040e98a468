"""From an experiment config to the prepared store, its loaders and the test windows evaluation uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgen_jax.data.histories import WindowConfig
from pgen_jax.data.loader import HistorySource, make_loader
from pgen_jax.data.plan import DataSpec
from pgen_jax.data.store import builders, prepare


def spec_from_config(cfg) -> DataSpec:
  data_cfg = cfg.data
  windows = WindowConfig(history_len=data_cfg.history_len, future_len=data_cfg.future_len, stride=data_cfg.stride,
                         min_rating=data_cfg.min_rating if data_cfg.min_rating > 0 else None,
                         test_windows=data_cfg.test_windows, val_windows=data_cfg.val_windows,
                         holdout_users=data_cfg.holdout_users)
  return DataSpec(name=data_cfg.name, root=str(data_cfg.root), images=str(data_cfg.images),
                  image_size=data_cfg.image_size, windows=windows)


def store_dir(cfg) -> Path:
  return Path(cfg.data.store or Path(cfg.workdir) / "data")


def prepare_from_config(cfg) -> dict:
  return prepare(spec_from_config(cfg), store_dir(cfg))


def num_items(cfg) -> int:
  items, _ = builders(spec_from_config(cfg), store_dir(cfg))
  return items.info.splits["items"].num_examples


def item_chunks(cfg, size: int = 64):
  """Every prepared item's generation image and id, in store order, as (images (n, S, S, 3) uint8,
  ids (n,) int64) chunks of at most `size` rows: the whole item set never sits in memory at once."""
  items, _ = builders(spec_from_config(cfg), store_dir(cfg))
  source = items.as_data_source(split="items")
  for start in range(0, len(source), size):
    rows = [source[i] for i in range(start, min(start + size, len(source)))]
    yield np.stack([r["target"] for r in rows]), np.array([int(r["item_id"]) for r in rows], np.int64)


def source_from_config(cfg, split: str, *, with_future: bool = True) -> HistorySource:
  return HistorySource(spec_from_config(cfg), str(store_dir(cfg)), split, with_future=with_future,
                       cache_mb=cfg.data.cache_mb)


def loader_from_config(cfg, split: str, *, batch_size: int, seed: int, shuffle: bool = True,
                       num_epochs: int | None = None, with_future: bool = True, workers: int | None = None,
                       drop_remainder: bool = True):
  return make_loader(source_from_config(cfg, split, with_future=with_future), batch_size=batch_size, seed=seed,
                     shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
                     worker_count=cfg.data.workers if workers is None else workers)


def test_window_batches(cfg, batch_size: int, per_user: int, limit: int = 0, with_future: bool = True):
  """Batches of the test windows evaluation uses, the last one possibly smaller: the test split in
  order, of users held out of training when data.holdout_users is set, at most `per_user` per user
  and `limit` in all (0: no limit)."""
  held_out = None
  if cfg.data.holdout_users:
    train_users = source_from_config(cfg, "train", with_future=False).users()
    held_out = lambda u: u not in train_users
  seen, taken = {}, 0
  for b in loader_from_config(cfg, "test", batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
                              with_future=with_future, workers=0, drop_remainder=False):
    b = {k: np.array(v) for k, v in b.items()}
    keep = []
    for u in map(int, b["user"]):
      ok = (held_out is None or held_out(u)) and seen.get(u, 0) < per_user and (not limit or taken < limit)
      seen[u] = seen.get(u, 0) + ok
      taken += ok
      keep.append(ok)
    if any(keep):
      yield {k: v[np.array(keep)] for k, v in b.items()}
    if limit and taken >= limit:
      return
