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
from pathlib import Path

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
  windows = histories.make_windows(seqs, spec.windows, counts)
  used = sorted(set(np.concatenate([w.reshape(-1) for w in windows.items.values()]).tolist()))
  if not used:
    raise DataError(f"{spec.root}: no window of {spec.windows.length} positive items with images for any "
                    f"user ({dict(counts)}; {report.summary()['skipped']})")
  stats = {"splits": windows.stats, "interactions": len(inter), "users": int(len(np.unique(inter.user))),
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
  plan = make_plan(spec)
  dl_config = __import__("tensorflow_datasets").download.DownloadConfig(manual_dir=spec.root)
  for part in ("items", "windows"):
    b = cls(spec=spec, part=part, plan=plan, data_dir=str(data_dir), file_format="array_record")
    b.download_and_prepare(download_config=dl_config)
  stats = {**plan.stats, "fingerprint": fp, "spec": dataclasses.asdict(spec)}
  data_dir.mkdir(parents=True, exist_ok=True)
  write_json(stats_path, stats)
  return stats


def builders(spec: DataSpec, data_dir: str | Path):
  from pgen_jax.data.tfds_builder import PgenHistories as cls
  out = [cls(spec=spec, part=p, data_dir=str(data_dir)) for p in ("items", "windows")]
  for b in out:
    if not b.is_prepared():
      raise DataError(f"{data_dir}: no prepared {b.name}/{b.builder_config.name}; run the prepare stage first")
  return out
