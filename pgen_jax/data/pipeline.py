"""From an experiment config to the prepared store and its loaders."""

from __future__ import annotations

from pathlib import Path

from pgen_jax.data.histories import WindowConfig
from pgen_jax.data.loader import HistorySource, make_loader
from pgen_jax.data.plan import DataSpec
from pgen_jax.data.store import prepare


def spec_from_config(cfg) -> DataSpec:
  d = cfg.data
  windows = WindowConfig(history_len=d.history_len, future_len=d.future_len, stride=d.stride,
                         min_rating=d.min_rating if d.min_rating > 0 else None, test_windows=d.test_windows,
                         val_windows=d.val_windows, holdout_users=d.holdout_users)
  return DataSpec(name=d.name, root=str(d.root), images=str(d.images), image_size=d.image_size, windows=windows)


def store_dir(cfg) -> Path:
  return Path(cfg.data.store or Path(cfg.workdir) / "data")


def prepare_from_config(cfg) -> dict:
  return prepare(spec_from_config(cfg), store_dir(cfg))


def source_from_config(cfg, split: str, *, with_future: bool = True) -> HistorySource:
  return HistorySource(spec_from_config(cfg), str(store_dir(cfg)), split, with_future=with_future,
                       cache_mb=cfg.data.cache_mb)


def loader_from_config(cfg, split: str, *, batch_size: int, seed: int, shuffle: bool = True,
                       num_epochs: int | None = None, with_future: bool = True, workers: int | None = None,
                       drop_remainder: bool = True):
  return make_loader(source_from_config(cfg, split, with_future=with_future), batch_size=batch_size, seed=seed,
                     shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
                     worker_count=cfg.data.workers if workers is None else workers)
