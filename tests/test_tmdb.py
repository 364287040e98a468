"""The TMDB poster fetcher against a local server on 127.0.0.1 that plays TMDB, errors included."""

import collections
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from pgen_jax.data import tmdb


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
  assert counts == {"ok": 3}
  counts = tmdb.fetch(links, out, client(server))
  assert counts == {"ok": 6, "missing": 2, "error": 1}
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
  with pytest.raises(tmdb.AuthError, match="401"):
    tmdb.fetch(links, tmp_path / "p", client(server, key="wrong"))


def test_server_down_is_recorded_as_errors(links, tmp_path):
  dead = tmdb.Client("k", api="http://127.0.0.1:9/3", images="http://127.0.0.1:9/t/p", rate=0, retries=1,
                     timeout=0.2, backoff=0.01)
  counts = tmdb.fetch(links, tmp_path / "p", dead, limit=2)
  assert counts == {"error": 2}
  assert "gave up after 2 tries" in json.loads((tmp_path / "p" / "manifest.json").read_text())["1"]["error"]
