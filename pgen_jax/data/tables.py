"""What every reader returns: the item catalog, the interactions, and a report of what was skipped.

Readers never crash halfway on bad lines: a line that cannot be used is skipped and counted under a
reason, with the first few file:line examples kept for the summary. A file that cannot be read at all
(missing, empty, wrong header, mostly malformed) is an error naming the file.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from pgen_jax.errors import DataError


@dataclasses.dataclass
class Report:
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, where: str) -> None:
    self.skipped[reason] += 1
    ex = self.examples.setdefault(reason, [])
    if len(ex) < 5:
      ex.append(where)

  def summary(self) -> dict:
    return {"skipped": dict(self.skipped), "examples": self.examples}


@dataclasses.dataclass
class Catalog:
  """Items: id -> title and tags (MovieLens genres, PixelRec tags)."""
  titles: dict[int, str]
  tags: dict[int, list[str]]
  tmdb: dict[int, int] = dataclasses.field(default_factory=dict)

  def text(self, item: int) -> str:
    tags = [t for t in self.tags.get(item, []) if t and t != "(no genres listed)"]
    return f"{self.titles[item]} | {', '.join(tags)}" if tags else self.titles[item]


@dataclasses.dataclass
class Interactions:
  user: np.ndarray       # int64
  item: np.ndarray       # int64
  rating: np.ndarray     # float32, NaN for implicit feedback
  timestamp: np.ndarray  # int64 seconds

  def __len__(self) -> int:
    return len(self.user)


def lines(path: Path, encoding: str, report: Report) -> Iterator[tuple[int, str]]:
  """(line number, text) of a text file, decoding each line alone so one bad byte costs one line."""
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        text = raw.decode(encoding)
      except UnicodeDecodeError as e:
        report.skip("undecodable", f"{path.name}:{n}: {e.reason} at byte {e.start}")
        continue
      text = text.rstrip("\r\n")
      if text.strip():
        yield n, text


def csv_rows(path: Path, required: tuple[str, ...], report: Report, encoding: str = "utf-8"):
  """(line number, {column: value}) of a CSV with a header holding at least `required`."""
  it = lines(path, encoding, report)
  try:
    _, head = next(it)
  except StopIteration:
    raise DataError(f"{path}: empty file") from None
  header = next(csv.reader([head.lstrip("\ufeff")]))
  missing = [c for c in required if c not in header]
  if missing:
    raise DataError(f"{path}:1: header {header} lacks column(s) {missing}")
  for n, text in it:
    row = next(csv.reader([text]), [])
    if len(row) != len(header):
      report.skip("malformed", f"{path.name}:{n}: {len(row)} fields, expected {len(header)}")
      continue
    yield n, dict(zip(header, row))


def check_mostly_valid(path: Path, good: int, report: Report, reasons=("malformed", "undecodable")) -> None:
  bad = sum(report.skipped[r] for r in reasons)
  if good == 0:
    raise DataError(f"{path}: no usable lines" + (f" ({bad} malformed or undecodable, e.g. "
                                                   f"{report.examples.get('malformed', report.examples.get('undecodable'))})" if bad else ""))
  if bad > good:
    raise DataError(f"{path}: more bad lines ({bad}) than good ({good}); is this the right file/format? "
                    f"e.g. {report.examples.get('malformed') or report.examples.get('undecodable')}")


def dedupe(inter: Interactions, report: Report) -> Interactions:
  """Keeps each (user, item) once, at its earliest time; later repeats are counted as duplicates."""
  order = np.lexsort((inter.timestamp, inter.item, inter.user))
  u, i = inter.user[order], inter.item[order]
  first = np.ones(len(order), bool)
  first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
  if (~first).any():
    report.skipped["duplicate_interaction"] += int((~first).sum())
  keep = np.sort(order[first])
  return Interactions(inter.user[keep], inter.item[keep], inter.rating[keep], inter.timestamp[keep])
