"""MovieLens readers: ml-1m ("::"-separated .dat, ISO-8859-1) and ml-latest(-small) / ml-25m / ml-32m
(UTF-8 CSV with header and quoted titles; links.csv maps to TMDB)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pgen_jax.data.tables import Catalog, Interactions, Report, check_mostly_valid, csv_rows, dedupe, lines
from pgen_jax.errors import DataError


def detect(root: Path) -> str:
  if (root / "ratings.dat").exists() and (root / "movies.dat").exists():
    return "dat"
  if (root / "ratings.csv").exists() and (root / "movies.csv").exists():
    return "csv"
  raise DataError(f"{root}: no MovieLens files (expected movies.dat + ratings.dat, or movies.csv + ratings.csv)")


def read(root: str | Path, report: Report | None = None) -> tuple[Catalog, Interactions, Report]:
  root = Path(root)
  report = report if report is not None else Report()
  if detect(root) == "dat":
    catalog = _movies_dat(root / "movies.dat", report)
    inter = _ratings_dat(root / "ratings.dat", report)
  else:
    catalog = _movies_csv(root / "movies.csv", report)
    if (root / "links.csv").exists():
      catalog.tmdb = read_links(root / "links.csv", report)
    inter = _ratings_csv(root / "ratings.csv", report)
  known = np.isin(inter.item, np.fromiter(catalog.titles, np.int64, len(catalog.titles)))
  if (~known).any():
    report.skipped["unknown_item"] += int((~known).sum())
    for j in np.flatnonzero(~known)[:5]:
      report.examples.setdefault("unknown_item", []).append(f"user {inter.user[j]} rated unknown movie {inter.item[j]}")
    inter = Interactions(inter.user[known], inter.item[known], inter.rating[known], inter.timestamp[known])
  return catalog, dedupe(inter, report), report


def _movies_dat(path: Path, report: Report) -> Catalog:
  titles, tags = {}, {}
  for n, text in lines(path, "latin-1", report):
    parts = text.split("::")
    if len(parts) != 3 or not parts[0].isdigit():
      report.skip("malformed", f"{path.name}:{n}: expected MovieID::Title::Genres")
      continue
    titles[int(parts[0])] = parts[1]
    tags[int(parts[0])] = parts[2].split("|")
  check_mostly_valid(path, len(titles), report)
  return Catalog(titles, tags)


def _ratings_dat(path: Path, report: Report) -> Interactions:
  rows = []
  for n, text in lines(path, "latin-1", report):
    parts = text.split("::")
    try:
      if len(parts) != 4:
        raise ValueError
      rows.append((int(parts[0]), int(parts[1]), _rating(parts[2]), int(parts[3])))
    except ValueError:
      report.skip("malformed", f"{path.name}:{n}: expected UserID::MovieID::Rating::Timestamp")
  check_mostly_valid(path, len(rows), report)
  return _interactions(rows)


def _movies_csv(path: Path, report: Report) -> Catalog:
  titles, tags = {}, {}
  for n, row in csv_rows(path, ("movieId", "title", "genres"), report):
    if not row["movieId"].isdigit():
      report.skip("malformed", f"{path.name}:{n}: movieId {row['movieId']!r}")
      continue
    titles[int(row["movieId"])] = row["title"]
    tags[int(row["movieId"])] = row["genres"].split("|")
  check_mostly_valid(path, len(titles), report)
  return Catalog(titles, tags)


def read_links(path: Path, report: Report) -> dict[int, int]:
  out = {}
  for n, row in csv_rows(path, ("movieId", "tmdbId"), report):
    if row["movieId"].isdigit() and row["tmdbId"].isdigit():
      out[int(row["movieId"])] = int(row["tmdbId"])
    elif row["movieId"].isdigit() and not row["tmdbId"]:
      report.skipped["no_tmdb_id"] += 1
    else:
      report.skip("malformed", f"{path.name}:{n}: movieId/tmdbId {row['movieId']!r}/{row['tmdbId']!r}")
  return out


def _ratings_csv(path: Path, report: Report) -> Interactions:
  rows = []
  for n, row in csv_rows(path, ("userId", "movieId", "rating", "timestamp"), report):
    try:
      rows.append((int(row["userId"]), int(row["movieId"]), _rating(row["rating"]), int(row["timestamp"])))
    except ValueError:
      report.skip("malformed", f"{path.name}:{n}: non-numeric or non-finite field in {list(row.values())}")
  check_mostly_valid(path, len(rows), report)
  return _interactions(rows)


def _rating(text: str) -> float:
  """float() also reads nan and inf; an explicit rating must be a finite number (NaN means implicit feedback)."""
  value = float(text)
  if not math.isfinite(value):
    raise ValueError(text)
  return value


def _interactions(rows) -> Interactions:
  a = np.array(rows, dtype=np.float64).reshape(-1, 4)
  return Interactions(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2].astype(np.float32),
                      a[:, 3].astype(np.int64))
