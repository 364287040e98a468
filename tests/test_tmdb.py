"""The TMDB poster fetcher against a local server on 127.0.0.1 that plays TMDB, errors included."""

import collections
import io
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_sites import closed_port_url

from pgen_jax.data import tmdb
from pgen_jax.errors import AuthError


def png(colour):
  buf = io.BytesIO()
  Image.new("RGB", (20, 30), colour).save(buf, format="PNG")
  return buf.getvalue()


class FakeTMDB:
  """tmdb ids: 1-3 fine; 4 no poster; 5 unknown movie; 6 fails twice with 500; 7 rate-limited once;
  8 hangs once past the client's timeout; 9 serves a corrupt image."""

  def __init__(self):
    self.hits = collections.Counter()
    fake = self

    class Handler(BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def reply(self, code, body=b"", ctype="application/json", headers=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
          self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def do_GET(self):
        url = urlparse(self.path)
        fake.hits[url.path] += 1
        n = fake.hits[url.path]
        if url.path.startswith("/3/movie/"):
          if parse_qs(url.query).get("api_key") != ["good-key"]:
            return self.reply(401, b'{"status_message": "Invalid API key"}')
          tid = int(url.path.rsplit("/", 1)[1])
          if tid == 5:
            return self.reply(404, b"{}")
          if tid == 6 and n <= 2:
            return self.reply(500, b"{}")
          if tid == 7 and n == 1:
            return self.reply(429, b"{}", headers=[("Retry-After", "0")])
          if tid == 8 and n == 1:
            time.sleep(1.5)
          path = None if tid == 4 else f"/poster{tid}.png"
          return self.reply(200, json.dumps({"id": tid, "poster_path": path}).encode())
        if url.path.startswith("/t/p/w500/poster"):
          tid = int(url.path[len("/t/p/w500/poster"):-4])
          body = b"not an image" if tid == 9 else png((tid * 20, 0, 0))
          return self.reply(200, body, "image/png")
        return self.reply(404)

    self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()
    host, port = self.server.server_address
    self.api, self.images = f"http://{host}:{port}/3", f"http://{host}:{port}/t/p"

  def close(self):
    self.server.shutdown()
    self.server.server_close()


@pytest.fixture
def server():
  s = FakeTMDB()
  yield s
  s.close()


@pytest.fixture
def links(tmp_path):
  path = tmp_path / "links.csv"
  # movieId m has tmdbId m (movie 10 has none).
  path.write_text("movieId,imdbId,tmdbId\n" + "".join(f"{m},{m:07d},{m}\n" for m in range(1, 10)) + "10,0000010,\n")
  return path


def client(server, key="good-key"):
  return tmdb.Client(key, api=server.api, images=server.images, rate=200, retries=3, timeout=0.5, backoff=0.01)


def test_fetch_resume_and_manifest(server, links, tmp_path):
  out = tmp_path / "posters"
  counts = tmdb.fetch(links, out, client(server), limit=3)  # interrupted after three movies
  assert counts == {"ok": 3, "this_run": {"ok": 3}}
  counts = tmdb.fetch(links, out, client(server))
  assert counts == {"ok": 6, "missing": 2, "error": 1, "this_run": {"ok": 3, "missing": 2, "error": 1}}
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["4"]["status"] == "missing" and manifest["5"]["status"] == "missing"
  assert manifest["9"]["status"] == "error" and "UnidentifiedImageError" in manifest["9"]["error"]
  assert "10" not in manifest
  for m in (1, 2, 3, 6, 7, 8):
    img = np.asarray(Image.open(out / f"{m}.jpg"))
    assert img.shape == (30, 20, 3) and abs(int(img[5, 5, 0]) - m * 20) <= 3
  assert server.hits["/3/movie/6"] == 3 and server.hits["/3/movie/7"] == 2 and server.hits["/3/movie/8"] == 2
  # The first three were not fetched again.
  assert server.hits["/3/movie/1"] == 1
  # A third run retries only the error.
  before = sum(server.hits.values())
  tmdb.fetch(links, out, client(server))
  assert sum(server.hits.values()) - before == 2 and server.hits["/3/movie/9"] == 2
  assert not list(out.glob(".*"))  # no temporary files left


def test_bad_key_stops_the_run(server, links, tmp_path):
  with pytest.raises(AuthError, match="401"):
    tmdb.fetch(links, tmp_path / "p", client(server, key="wrong"))


def test_unreachable_host_stops_the_run_after_a_few_movies(links, tmp_path, monkeypatch):
  dead = closed_port_url()
  slow_retries = tmdb.Client("k", api=dead + "/3", images=dead + "/t/p", rate=0, retries=5, timeout=0.2,
                             backoff=0.05)
  tries, sleeps = [], []
  urlopen, sleep = urllib.request.urlopen, time.sleep
  monkeypatch.setattr(urllib.request, "urlopen", lambda request, **kw: tries.append(request.full_url) or urlopen(request, **kw))
  monkeypatch.setattr(time, "sleep", lambda s: sleeps.append(s) or sleep(s))
  with pytest.raises(tmdb.Unreachable, match=f"{dead}/3/movie/3: cannot connect.*3 movies in a row"):
    tmdb.fetch(links, tmp_path / "p", slow_retries)
  # Two tries per movie and one back-off of 0.05 s between them, not six tries with back-offs of
  # 0.05 * (1, 2, 4, 8, 16) s.
  assert [t.split("?")[0] for t in tries] == [f"{dead}/3/movie/{m}" for m in (1, 1, 2, 2, 3, 3)]
  assert sleeps == [0.05] * 3
  manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
  assert sorted(manifest) == ["1", "2"] and all(e["status"] == "error" for e in manifest.values())


def cli(links, out, api, images, key="good-key"):
  return subprocess.run([sys.executable, "-m", "pgen_jax.data.tmdb", f"--links={links}", f"--out={out}",
                         f"--api_key={key}", f"--api_base={api}", f"--image_base={images}", "--rate=0"],
                        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])


def test_cli_without_network_exits_5_in_seconds_with_one_line(links, tmp_path):
  dead = closed_port_url()
  start = time.monotonic()
  run = cli(links, tmp_path / "p", dead + "/3", dead + "/t/p")
  assert run.returncode == 5 and "Traceback" not in run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith(f"error: {dead}/3/movie/")
  assert time.monotonic() - start < 15  # 3 movies x (2 tries, 1 s back-off), plus python's start


def test_cli_exits_1_when_every_fetch_failed(server, tmp_path):
  links = tmp_path / "links.csv"
  links.write_text("movieId,imdbId,tmdbId\n9,0000009,9\n")  # tmdb 9 serves a corrupt image
  run = cli(links, tmp_path / "p", server.api, server.images)
  assert run.returncode == 1 and "none of the 1 posters could be fetched" in run.stderr
  links.write_text("movieId,imdbId,tmdbId\n1,0000001,1\n9,0000009,9\n")
  assert cli(links, tmp_path / "q", server.api, server.images).returncode == 0
