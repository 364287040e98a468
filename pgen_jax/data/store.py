"""The prepared dataset: a tensorflow-datasets builder writing ArrayRecord, read back with tfds.data_source.

Two builder configs share one plan (plan.py: raw files -> usable items -> windows -> splits):
  items-<fp>:   one record per usable item, in index order: generation target and understanding
                input at `image_size`, and the item text. Images are stored once per item.
  windows-<fp>: train / validation / test records of item indices (history, target, future).
<fp> fingerprints the raw files and every option, so re-running with the same inputs is a no-op and
any change makes a new store. TFDS writes into a temporary directory and renames it when complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import filelock
import tensorflow_datasets as tfds

from pgen_jax.data import synthetic
from pgen_jax.data.plan import DataSpec, make_plan
from pgen_jax.data.tfds_builder import PgenHistories
from pgen_jax.errors import DataError
from pgen_jax.fileio import write_json
from pgen_jax.logs import quiet_library


def prepare(spec: DataSpec, data_dir: str | Path) -> dict:
  """Builds the store under data_dir (no-op when it exists); returns and saves the statistics."""
  data_dir = Path(data_dir)
  if spec.name == "synthetic":
    synthetic.write(spec.root)
  fp = spec.fingerprint()
  stats_path = data_dir / f"stats-{fp}.json"
  builders = [PgenHistories(spec=spec, part=p, data_dir=str(data_dir)) for p in ("items", "windows")]
  if stats_path.exists() and all(b.is_prepared() for b in builders):
    logging.info("prepared data %s already in %s", fp, data_dir)
    return json.loads(stats_path.read_text())
  data_dir.mkdir(parents=True, exist_ok=True)
  # One build at a time per store: whoever holds the lock knows every incomplete.* there is a dead build's.
  with filelock.FileLock(data_dir / ".prepare.lock"):
    if stats_path.exists() and all(b.is_prepared() for b in builders):  # another process built it meanwhile
      return json.loads(stats_path.read_text())
    plan = make_plan(spec)
    dl_config = tfds.download.DownloadConfig(manual_dir=spec.root)
    for part in ("items", "windows"):
      b = PgenHistories(spec=spec, part=part, plan=plan, data_dir=str(data_dir), file_format="array_record")
      logging.info("writing the prepared %s to %s", part, data_dir)
      with quiet_library():
        b.download_and_prepare(download_config=dl_config)
    stats = {**plan.stats, "fingerprint": fp, "spec": dataclasses.asdict(spec)}
    write_json(stats_path, stats)
    remove_leftovers(data_dir)
  return stats


def remove_leftovers(data_dir: Path) -> list[Path]:
  """Removes what killed builds left (TFDS's incomplete.* directories, fileio's .*.tmp-*); the caller
  holds the store's lock, so none of them is in use."""
  gone = []
  for pattern in ("*/*/incomplete.*", "*/incomplete.*", "incomplete.*", "**/.*.tmp-*"):
    for p in data_dir.glob(pattern):
      if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p)
  if gone:
    logging.info("removed %d leftovers of interrupted builds in %s", len(gone), data_dir)
  return gone


def builders(spec: DataSpec, data_dir: str | Path):
  out = [PgenHistories(spec=spec, part=p, data_dir=str(data_dir)) for p in ("items", "windows")]
  for b in out:
    if not b.is_prepared():
      raise DataError(f"{data_dir}: no prepared {b.name}/{b.builder_config.name}; run the prepare stage first")
  return out
