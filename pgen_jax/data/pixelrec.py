"""PixelRec reader: interactions (item_id, user_id, timestamp), item info (title, tag, description, counts)
and covers/<item_id>.jpg. Implicit feedback: every interaction is a positive. Bring your own copy."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from pgen_jax.data.tables import Catalog, Interactions, Report, check_mostly_valid, csv_rows, dedupe


def paths(root: Path) -> tuple[Path, Path, Path]:
  root = Path(root)
  inter = next((root / n for n in ("interactions.csv", "Pixel200K.csv", "Pixel1M.csv", "Pixel8M.csv")
                if (root / n).exists()), root / "interactions.csv")
  items = next((root / n for n in ("item_info.csv", "items.csv") if (root / n).exists()), root / "item_info.csv")
  covers = next((root / n for n in ("covers", "cover") if (root / n).is_dir()), root / "covers")
  return inter, items, covers


def read(root: str | Path, report: Report | None = None) -> tuple[Catalog, Interactions, Report]:
  report = report if report is not None else Report()
  inter_path, items_path, _ = paths(Path(root))
  titles, tags = {}, {}
  for n, row in csv_rows(items_path, ("item_id", "title", "tag"), report):
    key = _id(row["item_id"])
    if key is None:
      report.skip("malformed", f"{items_path.name}:{n}: item_id {row['item_id']!r}")
      continue
    titles[key] = row["title"]
    tags[key] = [t for t in row["tag"].replace(";", ",").split(",") if t.strip()]
  check_mostly_valid(items_path, len(titles), report)
  rows = []
  for n, row in csv_rows(inter_path, ("item_id", "user_id", "timestamp"), report):
    item, user, ts = _id(row["item_id"]), _id(row["user_id"]), _time(row["timestamp"])
    if None in (item, user, ts):
      report.skip("malformed", f"{inter_path.name}:{n}: {row}")
      continue
    if item not in titles:
      report.skip("unknown_item", f"{inter_path.name}:{n}: item {item}")
      continue
    rows.append((user, item, ts))
  check_mostly_valid(inter_path, len(rows), report)
  a = np.array(rows, dtype=np.int64).reshape(-1, 3)
  inter = Interactions(a[:, 0], a[:, 1], np.full(len(a), np.nan, np.float32), a[:, 2])
  return Catalog(titles, tags), dedupe(inter, report), report


def _id(text: str) -> int | None:
  text = text.strip()
  return int(text) if text.isdigit() else None


def _time(text: str) -> int | None:
  text = text.strip()
  if text.isdigit():
    return int(text)
  try:  # some releases write "2021-01-01 12:00:00"
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp())
  except ValueError:
    return None
