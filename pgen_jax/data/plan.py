"""The data plan: everything that determines the prepared store (DataSpec) and what goes into it
(raw files -> usable items -> windows -> splits: Plan, make_plan). The store (store.py) and its TFDS
builder (tfds_builder.py) both read it."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from pgen_jax.data import histories, images, movielens, pixelrec
from pgen_jax.data.tables import Report
from pgen_jax.errors import DataError

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
