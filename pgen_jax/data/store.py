"""The prepared dataset: a tensorflow-datasets builder writing ArrayRecord, read back with tfds.data_source.

Two builder configs share one plan (raw files -> usable items -> windows -> splits):
  items-<fp>:   one record per usable item, in index order: generation target and understanding
                input at `image_size`, and the item text. Images are stored once per item.
  windows-<fp>: train / validation / test records of item indices (history, target, future).
<fp> fingerprints the raw files and every option, so re-running with the same inputs is a no-op and
any change makes a new store. TFDS writes into a temporary directory and renames it when complete.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import filelock
import numpy as np

from pgen_jax.data import histories, images, movielens, pixelrec, synthetic
from pgen_jax.data.tables import DataError, Report
from pgen_jax.fileio import write_json

VERSION = "1.1.0"


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Everything that determines the prepared store."""
  name: str                     # movielens | pixelrec | synthetic
  root: str                     # raw files (the builder's manual_dir)
  images: str = ""              # image folder; default root/posters (MovieLens) or root/covers (PixelRec)
  image_size: int = 384
  windows: histories.WindowConfig = histories.WindowConfig()

  def image_dir(self) -> Path:
    if self.images:
      return Path(self.images)
    if self.name == "pixelrec":
      return pixelrec.paths(Path(self.root))[2]
    return Path(self.root) / "posters"

  def fingerprint(self) -> str:
    h = hashlib.sha256(json.dumps({"version": VERSION, "spec": dataclasses.asdict(self)}, sort_keys=True).encode())
    root = Path(self.root)
    for p in sorted(list(root.glob("*.*")) + list(self.image_dir().glob("*"))):
      if p.is_file():
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


@dataclasses.dataclass
class Plan:
  item_ids: list[int]            # index -> item id
  texts: list[str]
  paths: list[Path]
  windows: histories.Windows     # item ids
  stats: dict

  def index_of(self) -> dict[int, int]:
    return {item: i for i, item in enumerate(self.item_ids)}


def make_plan(spec: DataSpec) -> Plan:
  report = Report()
  reader = {"movielens": movielens.read, "synthetic": movielens.read, "pixelrec": pixelrec.read}[spec.name]
  catalog, inter, report = reader(spec.root, report)
  counts = collections.Counter()
  wanted = np.unique(inter.item)
  found = images.find(spec.image_dir(), wanted)
  counts["item_image_missing"] = int(len(wanted) - len(found))
  usable: dict[int, Path] = {}
  for n, (item, path) in enumerate(sorted(found.items()), 1):
    try:
      images.load_rgb(path)
      usable[item] = path
    except images.ImageSkip as e:
      report.skip(f"image_{e.reason}", str(e))
    if n % 1000 == 0:
      logging.info("checked %d/%d images", n, len(found))
  seqs = histories.sequences(inter, spec.windows, set(usable), counts)
  n_users = int(len(np.unique(inter.user)))
  counts["users_without_usable_positive"] = n_users - len(seqs)  # no positive rating of an item with an image
  windows = histories.make_windows(seqs, spec.windows, counts)
  used = sorted(set(np.concatenate([w.reshape(-1) for w in windows.items.values()]).tolist()))
  if not used:
    raise DataError(f"{spec.root}: no window of {spec.windows.length} positive items with images for any "
                    f"user ({dict(counts)}; {report.summary()['skipped']})")
  in_windows = len(set().union(*(set(u.tolist()) for u in windows.users.values())))
  # Every user with a valid interaction is in exactly one of these.
  users = {"total": n_users, "in_windows": in_windows, "too_short": counts["users_too_short"],
           "without_usable_positive": counts["users_without_usable_positive"]}
  stats = {"splits": windows.stats, "interactions": len(inter), "users": n_users, "user_counts": users,
           "items_with_usable_image": len(usable), "items_in_windows": len(used),
           "dropped": {**dict(counts), **dict(report.skipped)}, "examples": report.examples}
  return Plan(item_ids=used, texts=[catalog.text(i) for i in used], paths=[usable[i] for i in used],
              windows=windows, stats=stats)


def prepare(spec: DataSpec, data_dir: str | Path) -> dict:
  """Builds the store under data_dir (no-op when it exists); returns and saves the statistics."""
  data_dir = Path(data_dir)
  if spec.name == "synthetic":
    synthetic.write(spec.root)
  from pgen_jax.data.tfds_builder import PgenHistories as cls
  fp = spec.fingerprint()
  stats_path = data_dir / f"stats-{fp}.json"
  builders = [cls(spec=spec, part=p, data_dir=str(data_dir)) for p in ("items", "windows")]
  if stats_path.exists() and all(b.is_prepared() for b in builders):
    logging.info("prepared data %s already in %s", fp, data_dir)
    return json.loads(stats_path.read_text())
  data_dir.mkdir(parents=True, exist_ok=True)
  # One build at a time per store: whoever holds the lock knows every incomplete.* there is a dead build's.
  with filelock.FileLock(data_dir / ".prepare.lock"):
    if stats_path.exists() and all(b.is_prepared() for b in builders):  # another process built it meanwhile
      return json.loads(stats_path.read_text())
    plan = make_plan(spec)
    dl_config = __import__("tensorflow_datasets").download.DownloadConfig(manual_dir=spec.root)
    for part in ("items", "windows"):
      b = cls(spec=spec, part=part, plan=plan, data_dir=str(data_dir), file_format="array_record")
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
  from pgen_jax.data.tfds_builder import PgenHistories as cls
  out = [cls(spec=spec, part=p, data_dir=str(data_dir)) for p in ("items", "windows")]
  for b in out:
    if not b.is_prepared():
      raise DataError(f"{data_dir}: no prepared {b.name}/{b.builder_config.name}; run the prepare stage first")
  return out
