"""Loader throughput from the prepared store: examples/s of grain batches on this machine's CPUs.

  python -m pgen_jax.bench.data --image_size=384 --workers=2 --batch=16

Prepares the synthetic world at `image_size` (once) under --dir and times full batches (history,
target and future images, texts), after a warm-up.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from pgen_jax.data.histories import WindowConfig
from pgen_jax.data.loader import HistorySource, make_loader
from pgen_jax.data.plan import DataSpec
from pgen_jax.data.store import prepare

_DIR = flags.DEFINE_string("dir", "/tmp/pgen_bench_data", "where the synthetic world and store go")
_SIZE = flags.DEFINE_integer("image_size", 384, "image size")
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes")
_BATCH = flags.DEFINE_integer("batch", 16, "examples per batch")
_BATCHES = flags.DEFINE_integer("batches", 40, "timed batches")
_CACHE = flags.DEFINE_integer("cache_mb", 1024, "per-process item cache (0: every item read from the store)")
_FUTURE = flags.DEFINE_bool("future", True, "also load the future items' images (GRPO/eval; SFT does not)")


def main(argv):
  del argv
  spec = DataSpec(name="synthetic", root=os.path.join(_DIR.value, "world"), image_size=_SIZE.value,
                  windows=WindowConfig())
  prepare(spec, os.path.join(_DIR.value, "store"))
  src = HistorySource(spec, os.path.join(_DIR.value, "store"), "train", with_future=_FUTURE.value,
                      cache_mb=_CACHE.value)
  it = iter(make_loader(src, batch_size=_BATCH.value, seed=0, worker_count=_WORKERS.value, shard_index=0,
                        shard_count=1))
  for _ in range(3):
    next(it)
  t0 = time.perf_counter()
  nbytes = 0
  for _ in range(_BATCHES.value):
    b = next(it)
    nbytes += sum(np.asarray(v).nbytes for k, v in b.items() if k in ("history", "target", "future"))
  dt = time.perf_counter() - t0
  n = _BATCHES.value * _BATCH.value
  future = spec.windows.future_len if _FUTURE.value else 0
  print(f"{os.cpu_count()} CPUs, {_WORKERS.value} workers, cache {_CACHE.value} MB, {_SIZE.value}px, "
        f"{spec.windows.history_len}+1+{future} images per example: {n / dt:.0f} examples/s "
        f"({nbytes / dt / 1e6:.0f} MB/s of images)")


if __name__ == "__main__":
  app.run(main)
