"""Prepared windows -> grain batches: shuffled, batched, multi-worker, sharded by host, resumable.

Each example gathers its items from the item records by index:
  history (k-1, S, S, 3) uint8  understanding inputs (pad-to-square), for the prompt
  target  (S, S, 3) uint8       generation target (centre crop)
  future  (p, S, S, 3) uint8    generation-target crops of the next items (rewards, metrics)
  history_text (k-1,), target_text: item texts; user, item_ids (L,)
The iterator's state (get_state/set_state) is small JSON: a resumed run continues with exactly the
next batch.
"""

from __future__ import annotations

import grain.python as grain
import numpy as np

from pgen_jax.data.store import DataSpec, builders


class HistorySource(grain.RandomAccessDataSource):
  """Random access to the windows of one split, with their items gathered. Picklable for workers."""

  def __init__(self, spec: DataSpec, data_dir: str, split: str):
    items_b, windows_b = builders(spec, data_dir)
    if split not in windows_b.info.splits:
      raise ValueError(f"split {split!r} is empty or unknown; have {list(windows_b.info.splits)}")
    self._args = (spec, str(data_dir), split)
    self._len = windows_b.info.splits[split].num_examples
    self.history_len = spec.windows.history_len
    self._items = self._windows = None

  def _open(self):
    items_b, windows_b = builders(self._args[0], self._args[1])
    self._items = items_b.as_data_source(split="items")
    self._windows = windows_b.as_data_source(split=self._args[2])

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    if self._windows is None:
      self._open()
    w = self._windows[int(index)]
    rows = [self._items[int(i)] for i in w["items"]]
    k = self.history_len
    return {
        "user": np.int64(w["user"]),
        "item_ids": np.array([r["item_id"] for r in rows], np.int64),
        "history": np.stack([r["understanding"] for r in rows[:k]]),
        "target": rows[k]["target"],
        "future": np.stack([r["target"] for r in rows[k + 1:]]) if len(rows) > k + 1
                  else np.zeros((0, *rows[k]["target"].shape), np.uint8),
        "history_text": np.array([_text(r["text"]) for r in rows[:k]], dtype=object),
        "target_text": _text(rows[k]["text"]),
    }

  def __getstate__(self):
    return {"args": self._args, "len": self._len, "history_len": self.history_len}

  def __setstate__(self, state):
    self._args, self._len, self.history_len = state["args"], state["len"], state["history_len"]
    self._items = self._windows = None


def _text(t) -> str:
  return t.decode("utf-8") if isinstance(t, bytes) else str(t)


def make_loader(source: HistorySource, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                num_epochs: int | None = None, worker_count: int = 0, drop_remainder: bool = True,
                shard_index: int | None = None, shard_count: int | None = None) -> grain.DataLoader:
  """A grain DataLoader over `source`; `batch_size` is per host. Hosts read disjoint shards."""
  if shard_index is None:
    import jax
    shard_index, shard_count = jax.process_index(), jax.process_count()
  sampler = grain.IndexSampler(len(source), grain.ShardOptions(shard_index, shard_count, drop_remainder=True),
                               shuffle=shuffle, num_epochs=num_epochs, seed=seed)
  return grain.DataLoader(data_source=source, sampler=sampler,
                          operations=[grain.Batch(batch_size, drop_remainder=drop_remainder)],
                          worker_count=worker_count)
