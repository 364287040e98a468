"""Fetches MovieLens posters from TMDB with your API key: links.csv tmdbId -> poster_path -> image.

  python -m pgen_jax.data.tmdb --links=data/movielens/links.csv --out=data/movielens/posters \
      --api_key=$TMDB_API_KEY

Rate-limited, retries with exponential back-off (429 honours Retry-After; 5xx, timeouts and dropped
connections are retried), resumable: `manifest.json` in the output folder records every movie as
ok / missing (TMDB has no poster, or no such movie) / error, and a rerun only fetches what is not ok
or missing. Images are checked to decode and written atomically as <movieId>.jpg.

A host that cannot be reached at all (refused, no route, no DNS) is tried twice per movie, and after
`max_unreachable` movies in a row the run stops with an error naming the URL: without a network the
fetcher fails in seconds instead of retrying every movie. Exit status: 0 when something was fetched or
nothing was left to fetch, 1 when every fetch of this run failed, 2 for a bad key or links file, 5 when
TMDB cannot be reached.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from absl import app, flags
from PIL import Image

from pgen_jax.data.movielens import read_links
from pgen_jax.data.tables import Report
from pgen_jax.errors import AuthError, DataError, FetchError
from pgen_jax.fileio import write_bytes, write_json

API = "https://api.themoviedb.org/3"
IMAGES = "https://image.tmdb.org/t/p"


class Unreachable(FetchError):
  """No connection to the host at all (as opposed to an error answer or a slow one)."""


def _unreachable(e: BaseException) -> bool:
  reason = getattr(e, "reason", e)
  return isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or (
      isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH))


class RateLimiter:
  def __init__(self, per_second: float):
    self.interval = 1.0 / per_second if per_second > 0 else 0.0
    self.next = 0.0
    self.lock = threading.Lock()

  def wait(self) -> None:
    with self.lock:
      now = time.monotonic()
      if self.next > now:
        time.sleep(self.next - now)
      self.next = max(now, self.next) + self.interval


class Client:
  def __init__(self, api_key: str, *, api: str = API, images: str = IMAGES, size: str = "w500",
               rate: float = 20.0, retries: int = 5, timeout: float = 20.0, backoff: float = 1.0):
    if not api_key:
      raise AuthError("no TMDB API key: pass --api_key or set TMDB_API_KEY")
    self.key, self.api, self.images, self.size = api_key, api.rstrip("/"), images.rstrip("/"), size
    self.limiter, self.retries, self.timeout, self.backoff = RateLimiter(rate), retries, timeout, backoff

  def _get(self, url: str, headers: dict) -> bytes | None:
    """The body, None for 404; raises after the last retry."""
    last = None
    for attempt in range(self.retries + 1):
      self.limiter.wait()
      try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout) as r:
          return r.read()
      except urllib.error.HTTPError as e:
        if e.code == 404:
          return None
        if e.code in (401, 403):
          raise AuthError(f"TMDB refused the API key ({e.code})") from e
        if e.code != 429 and e.code < 500:
          raise
        last = e
        wait = float(e.headers.get("Retry-After") or 0) if e.code == 429 else 0.0
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        last, wait = e, 0.0
        if _unreachable(e) and attempt >= 1:  # a second refusal: waiting longer will not bring the host up
          raise Unreachable(f"{url.split('?')[0]}: cannot connect ({getattr(e, 'reason', e)})") from e
      if attempt < self.retries:
        time.sleep(max(wait, self.backoff * 2 ** attempt))
    raise RuntimeError(f"{url.split('?')[0]}: gave up after {self.retries + 1} tries ({last})")

  def poster(self, tmdb_id: int) -> bytes | None:
    """Poster image bytes, or None when TMDB has no such movie or no poster."""
    headers = {"Accept": "application/json"}
    url = f"{self.api}/movie/{tmdb_id}"
    if self.key.startswith("eyJ"):  # a v4 read access token
      headers["Authorization"] = f"Bearer {self.key}"
    else:
      url += "?" + urllib.parse.urlencode({"api_key": self.key})
    body = self._get(url, headers)
    if body is None:
      return None
    path = json.loads(body).get("poster_path")
    if not path:
      return None
    return self._get(f"{self.images}/{self.size}{path}", {})


def fetch(links: str | Path, out: str | Path, client: Client, *, limit: int | None = None,
          max_unreachable: int = 3) -> dict:
  """Fetches every poster not yet ok/missing in the manifest; returns the manifest's counts, and under
  "this_run" the counts of this run alone. Stops with Unreachable after `max_unreachable` movies in a row
  found the host unreachable."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  report = Report()
  tmdb = read_links(Path(links), report)
  if not tmdb:
    raise DataError(f"{links}: no movieId with a tmdbId")
  manifest_path = out / "manifest.json"
  manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
  todo = [m for m in sorted(tmdb) if manifest.get(str(m), {}).get("status") not in ("ok", "missing")
          or (manifest[str(m)]["status"] == "ok" and not (out / f"{m}.jpg").exists())]
  if limit is not None:
    todo = todo[:limit]
  logging.info("%d movies with a tmdbId, %d to fetch", len(tmdb), len(todo))
  this_run: dict[str, int] = {}
  unreachable, start, shown = 0, time.monotonic(), time.monotonic()
  try:
    for n, movie in enumerate(todo, 1):
      entry = {"tmdb_id": tmdb[movie]}
      try:
        data = client.poster(tmdb[movie])
        if data is None:
          entry["status"] = "missing"
        else:
          img = Image.open(io.BytesIO(data))
          img.load()
          buf = io.BytesIO()
          img.convert("RGB").save(buf, format="JPEG", quality=95)
          write_bytes(out / f"{movie}.jpg", buf.getvalue())
          entry["status"] = "ok"
      except AuthError:
        raise
      except Unreachable as e:
        unreachable += 1
        if unreachable >= max_unreachable:
          raise Unreachable(f"{e}; {unreachable} movies in a row could not connect. Check the network (or "
                            "--api_base/--image_base), then rerun: fetched posters are kept") from None
        entry.update(status="error", error=f"{type(e).__name__}: {e}")
      except Exception as e:  # one movie's failure is recorded, the run goes on
        entry.update(status="error", error=f"{type(e).__name__}: {e}")
      if entry["status"] != "error" or not entry["error"].startswith("Unreachable"):
        unreachable = 0
      manifest[str(movie)] = entry
      this_run[entry["status"]] = this_run.get(entry["status"], 0) + 1
      now = time.monotonic()
      if n % 50 == 0 or n == len(todo) or now - shown > 10:
        write_json(manifest_path, manifest)
        eta = (now - start) / n * (len(todo) - n)
        logging.info("%d/%d done (%s), ETA %.0f min", n, len(todo), this_run, eta / 60)
        shown = now
  finally:
    write_json(manifest_path, manifest)
  counts: dict[str, int] = {}
  for e in manifest.values():
    counts[e["status"]] = counts.get(e["status"], 0) + 1
  return {**counts, "this_run": this_run}


_LINKS = flags.DEFINE_string("links", None, "MovieLens links.csv")
_OUT = flags.DEFINE_string("out", None, "poster folder (gets <movieId>.jpg and manifest.json)")
_KEY = flags.DEFINE_string("api_key", os.environ.get("TMDB_API_KEY", ""), "TMDB API key or v4 token")
_RATE = flags.DEFINE_float("rate", 20.0, "requests per second")
_SIZE = flags.DEFINE_string("size", "w500", "TMDB image size")
_API = flags.DEFINE_string("api_base", API, "TMDB API base URL")
_IMG = flags.DEFINE_string("image_base", IMAGES, "TMDB image base URL")
_LIMIT = flags.DEFINE_integer("limit", None, "fetch at most this many (then rerun to continue)")


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  try:
    client = Client(_KEY.value, api=_API.value, images=_IMG.value, size=_SIZE.value, rate=_RATE.value)
    counts = fetch(_LINKS.value, _OUT.value, client, limit=_LIMIT.value)
  except (AuthError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FetchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 5
  print(json.dumps(counts))
  run = counts["this_run"]
  if run and not any(run.get(k) for k in ("ok", "missing")):
    print(f"error: none of the {sum(run.values())} posters could be fetched this run (see "
          f"{Path(_OUT.value) / 'manifest.json'} for each error)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["links", "out"])
  app.run(main)
