"""The MovieLens archive from its official download, checksum verified, unpacked atomically.

files.grouplens.org publishes `<version>.zip` and `<version>.zip.md5` beside it. The zip downloads to
`<root>.zip.part`, resuming with a Range request when a connection breaks (in this run, up to
`tries` times, or in the next run); a wrong checksum deletes it. The zip's one top folder is unpacked
beside `root` and renamed to `root`, so `root` is either absent or complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import filelock

from pgen_jax.errors import FetchError
from pgen_jax.fileio import follow_umask

BASE_URL = "https://files.grouplens.org/datasets/movielens"
VERSIONS = ("ml-latest-small", "ml-1m", "ml-25m", "ml-32m", "ml-latest")
CHUNK = 1 << 20


def _open(url: str, headers: dict, timeout: float):
  try:
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
  except urllib.error.HTTPError as e:
    if e.code == 404:
      raise FetchError(f"{url}: not found (404); check data.version / fetch.movielens_url") from None
    raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise FetchError(f"{url}: cannot connect ({reason}); check the network or fetch.movielens_url") from None


def download(url: str, part: Path, *, tries: int = 5, timeout: float = 30.0, backoff: float = 1.0) -> Path:
  """url -> part, resuming what part already holds; returns part when the whole body is there."""
  last = None
  for attempt in range(tries):
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
      r = _open(url, headers, timeout)
    except FetchError as e:
      if "HTTP 416" in str(e) and have:  # the part is already the whole file
        return part
      if not ("cannot connect" in str(e) or "HTTP 5" in str(e)) or (attempt == 0 and not have):
        raise  # a 404, or nothing answers at all: say so at once rather than after minutes of retries
      last = e
      time.sleep(backoff * 2 ** attempt)
      continue
    with r:
      if have and r.status != 206:  # the server ignored the Range: start over
        have = 0
      total = r.headers.get("Content-Range", "").rpartition("/")[2] or r.headers.get("Content-Length")
      total = int(total) if total and total.isdigit() else None
      try:
        with open(part, "ab" if have else "wb") as f:
          done, shown = have, time.monotonic()
          while chunk := r.read(CHUNK):
            f.write(chunk)
            done += len(chunk)
            if time.monotonic() - shown > 10:
              logging.info("%s: %d/%s MB", url, done >> 20, total >> 20 if total else "?")
              shown = time.monotonic()
      except (OSError, urllib.error.URLError) as e:  # broken mid-file: keep what came, resume
        last = FetchError(f"{url}: connection broken at byte {part.stat().st_size} ({e})")
        logging.warning("%s; resuming", last)
        continue
    if total is None or part.stat().st_size >= total:
      return part
    last = FetchError(f"{url}: connection closed at byte {part.stat().st_size} of {total}")
    logging.warning("%s; resuming", last)
  raise FetchError(f"{last}; gave up after {tries} tries (rerun to resume from {part})")


def md5(path: Path) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    while chunk := f.read(CHUNK):
      h.update(chunk)
  return h.hexdigest()


def expected_md5(url: str, configured: str = "") -> str:
  if configured:
    return configured.lower()
  with _open(url + ".md5", {}, 30.0) as r:
    text = r.read().decode(errors="replace")
  m = re.search(r"\b[0-9a-fA-F]{32}\b", text)
  if not m:
    raise FetchError(f"{url}.md5: no MD5 sum in {text[:80]!r}; set fetch.movielens_md5")
  return m.group(0).lower()


def fetch_movielens(version: str, root: str | Path, *, base_url: str = BASE_URL, checksum: str = "") -> Path:
  """root holding the unpacked MovieLens `version` (a no-op when root exists)."""
  root = Path(root)
  if root.exists():
    return root
  if version not in VERSIONS:
    raise FetchError(f"data.version: {version!r} unknown; choose one of {VERSIONS}")
  url = f"{base_url.rstrip('/')}/{version}.zip"
  root.parent.mkdir(parents=True, exist_ok=True)
  with filelock.FileLock(str(root) + ".lock"):  # two processes must not append to one .part
    if root.exists():
      return root
    return _fetch(url, root, checksum)


def _fetch(url: str, root: Path, checksum: str) -> Path:
  want = expected_md5(url, checksum)
  part = Path(str(root) + ".zip.part")
  logging.info("downloading %s to %s", url, root)
  download(url, part)
  got = md5(part)
  if got != want:
    part.unlink()
    raise FetchError(f"{url}: MD5 {got} differs from the published {want}; the download was deleted, rerun "
                     "(or check fetch.movielens_url)")
  tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
  try:
    with zipfile.ZipFile(part) as z:
      z.extractall(tmp)
    tops = [p for p in tmp.iterdir() if not p.name.startswith("__MACOSX")]
    src = tops[0] if len(tops) == 1 and tops[0].is_dir() else tmp
    follow_umask(src)
    os.rename(src, root)
  except zipfile.BadZipFile as e:
    part.unlink()
    raise FetchError(f"{url}: not a zip archive ({e}); the download was deleted, rerun") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  part.unlink()
  return root
