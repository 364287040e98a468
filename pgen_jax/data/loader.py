"""Prepared windows -> grain batches: shuffled, batched, multi-worker, sharded by host, resumable.

Each example gathers its items from the item records by index:
  history (k-1, S, S, 3) uint8  understanding inputs (pad-to-square), for the prompt
  target  (S, S, 3) uint8       generation target (centre crop)
  future  (p, S, S, 3) uint8    generation-target crops of the next items (rewards, metrics); absent
                                when p = 0 or with_future=False
  history_text (k-1,), target_text: item texts; user, item_ids (L,), or (k+1,) without future
The iterator's state (get_state/set_state) is small JSON: a resumed run continues with exactly the
next batch. With worker processes, batch arrays live in shared memory that later batches reuse: put a
batch on the devices (or copy it) before taking the next.
"""

from __future__ import annotations

import collections
import sys
import threading

import grain.python as grain
from absl import flags
import numpy as np

from pgen_jax.data.plan import DataSpec
from pgen_jax.data.store import builders


class HistorySource(grain.RandomAccessDataSource):
  """Random access to the windows of one split, with their items gathered. Picklable for workers.

  Items recur across windows (a user's neighbouring windows share all but one), so each process keeps
  decoded items in an LRU cache of `cache_mb`. `with_future=False` skips the future images (SFT).
  """

  def __init__(self, spec: DataSpec, data_dir: str, split: str, *, with_future: bool = True,
               cache_mb: int = 1024):
    items_b, windows_b = builders(spec, data_dir)
    if split not in windows_b.info.splits:
      raise ValueError(f"split {split!r} is empty or unknown; have {list(windows_b.info.splits)}")
    self._args = (spec, str(data_dir), split, with_future, cache_mb)
    self._len = windows_b.info.splits[split].num_examples
    self._items = self._windows = None
    self._lock = threading.Lock()  # grain reads from several threads per process

  def _open(self):
    items_b, windows_b = builders(self._args[0], self._args[1])
    self._items = items_b.as_data_source(split="items")
    self._windows = windows_b.as_data_source(split=self._args[2])
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cached_bytes = 0

  def _item(self, i: int) -> dict:
    with self._lock:
      row = self._cache.get(i)
      if row is not None:
        self._cache.move_to_end(i)
        return row
    row = self._items[i]
    with self._lock:
      if i not in self._cache:
        self._cache[i] = row
        self._cached_bytes += row["target"].nbytes + row["understanding"].nbytes
      while self._cached_bytes > self._args[4] * 2**20 and self._cache:
        _, old = self._cache.popitem(last=False)
        self._cached_bytes -= old["target"].nbytes + old["understanding"].nbytes
    return row

  def __len__(self) -> int:
    return self._len

  def users(self) -> set[int]:
    """The users with a window in this split, from the window records alone (no item is read)."""
    with self._lock:
      if self._windows is None:
        self._open()
    return {int(self._windows[i]["user"]) for i in range(self._len)}

  def __getitem__(self, index: int) -> dict:
    with self._lock:
      if self._windows is None:
        self._open()
    w = self._windows[int(index)]
    k = self._args[0].windows.history_len
    with_future = self._args[3]
    rows = [self._item(int(i)) for i in (w["items"] if with_future else w["items"][:k + 1])]
    out = {
        "user": np.int64(w["user"]),
        "item_ids": np.array([r["item_id"] for r in rows], np.int64),
        "history": np.stack([r["understanding"] for r in rows[:k]]),
        "target": rows[k]["target"],
        "history_text": np.array([_text(r["text"]) for r in rows[:k]], dtype=object),
        "target_text": _text(rows[k]["text"]),
    }
    if with_future and len(rows) > k + 1:
      out["future"] = np.stack([r["target"] for r in rows[k + 1:]])
    return out

  def __repr__(self) -> str:  # grain checks it when restoring an iterator's state
    spec, _, split, with_future, _ = self._args
    return f"HistorySource({spec.name}-{spec.fingerprint()}, split={split}, with_future={with_future})"

  def __getstate__(self):  # workers reopen the sources themselves
    return {"args": self._args, "len": self._len}

  def __setstate__(self, state):
    self._args, self._len = state["args"], state["len"]
    self._items = self._windows = None
    self._lock = threading.Lock()


def _text(t) -> str:
  return t.decode("utf-8") if isinstance(t, bytes) else str(t)


def make_loader(source: HistorySource, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                num_epochs: int | None = None, worker_count: int = 0, drop_remainder: bool = True,
                shard_index: int | None = None, shard_count: int | None = None) -> grain.DataLoader:
  """A grain DataLoader over `source`; `batch_size` is per host. Hosts read disjoint slices of one global
  order: host i's batch t is rows [i * batch_size, (i + 1) * batch_size) of global batch t, the batch one
  host reading batch_size x hosts would get (the same examples in the same rows of the global array)."""
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags (e.g. under pytest)
      flags.FLAGS.mark_as_parsed()
  if shard_index is None:
    import jax  # lazy: grain's worker processes import this module and need no jax
    shard_index, shard_count = jax.process_index(), jax.process_count()
  sampler = HostSlices(grain.IndexSampler(len(source), grain.NoSharding(), shuffle=shuffle, num_epochs=num_epochs,
                                          seed=seed), batch_size, shard_index, shard_count, drop_remainder)
  return grain.DataLoader(data_source=source, sampler=sampler, shard_options=grain.NoSharding(),
                          operations=[grain.Batch(batch_size, drop_remainder=drop_remainder)],
                          worker_count=worker_count)


class HostSlices:
  """Host `index` of `count`'s records of a global sampler, `batch_size` of every `batch_size` x `count`.

  Not grain's ShardOptions: that gives each host a contiguous block of the records, shuffled on its own,
  so the global batches (and the trained parameters) depended on the number of hosts, and a host's
  iterator state meant other records on another host. Here the global order is the same for any number
  of hosts, and every host's iterator state (checkpointed by the primary host alone) is the same.
  With drop_remainder, an incomplete last global batch is dropped on every host, so all hosts see
  the same number of batches.
  """

  def __init__(self, sampler: grain.IndexSampler, batch_size: int, index: int, count: int, drop_remainder: bool):
    self._sampler, self._b, self._i, self._n = sampler, batch_size, index, count
    total = len(sampler)
    if total >= sys.maxsize:  # endless (num_epochs=None)
      self._len = sys.maxsize
    else:
      full, rest = divmod(total, batch_size * count)
      self._len = full * batch_size + (0 if drop_remainder else min(max(rest - index * batch_size, 0), batch_size))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of [0, {self._len})")
    step, row = divmod(index, self._b)
    meta = self._sampler[(step * self._n + self._i) * self._b + row]
    return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)

  def __repr__(self) -> str:  # grain checks it when restoring an iterator's state: the same on every host
    return f"HostSlices({self._sampler!r}, batch_size={self._b}, hosts={self._n})"
