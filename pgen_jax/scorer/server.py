"""The scorer process: PyTorch reward models (NIMA aesthetics, Qwen2.5-VL profile judge) behind HTTP.

Binds 127.0.0.1 by default; with a token set, every request needs "Authorization: Bearer <token>".
Requests over the size limit get 413, malformed ones 400; the server stays up. Models run one
request at a time (a lock), in batches; /health answers meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from pgen_jax.scorer.protocol import BadRequest, decode_images


class Scorer:
  """The loaded backends: {term: fn(images: list[np.ndarray], profiles: list[str] | None) -> np.ndarray}."""

  def __init__(self, backends: dict, batch: int = 16):
    self.backends, self.batch = backends, batch
    self.lock = threading.Lock()

  def score(self, request: dict) -> dict:
    terms = request.get("terms") or sorted(self.backends)
    unknown = [t for t in terms if t not in self.backends]
    if unknown:
      raise BadRequest(f"terms {unknown} not served here; this scorer has {sorted(self.backends)}")
    images = decode_images(request.get("images"))
    profiles = request.get("profiles")
    if "profile" in terms and (not isinstance(profiles, list) or len(profiles) != len(images)
                               or not all(isinstance(p, str) for p in profiles)):
      raise BadRequest("'profiles' must be a list of strings, one per image")
    out = {}
    with self.lock:
      for term in terms:
        scores = [self.backends[term](images[i:i + self.batch], None if profiles is None else profiles[i:i + self.batch])
                  for i in range(0, len(images), self.batch)]
        out[term] = np.concatenate(scores).astype(float).tolist()
    return out


def make_server(scorer: Scorer, host: str = "127.0.0.1", port: int = 0, token: str = "",
                max_bytes: int = 64 << 20) -> ThreadingHTTPServer:
  class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
      logging.info("%s " + fmt, self.address_string(), *args)

    def reply(self, code: int, body: dict):
      data = json.dumps(body).encode()
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def authorised(self) -> bool:
      if token and self.headers.get("Authorization") != f"Bearer {token}":
        self.reply(401, {"error": "missing or wrong token"})
        return False
      return True

    def do_GET(self):
      if not self.authorised():
        return
      if self.path == "/health":
        return self.reply(200, {"status": "ok", "terms": sorted(scorer.backends)})
      self.reply(404, {"error": f"no {self.path}; use GET /health or POST /score"})

    def do_POST(self):
      if not self.authorised():
        return
      if self.path != "/score":
        return self.reply(404, {"error": f"no {self.path}; use POST /score"})
      try:
        length = int(self.headers.get("Content-Length", ""))
      except ValueError:
        return self.reply(411, {"error": "Content-Length required"})
      if length > max_bytes:
        # Read (and drop) a moderately oversized body so the client sees the 413; refuse huge ones at once.
        remaining = length if length <= 16 * max_bytes else 0
        while remaining > 0:
          chunk = self.rfile.read(min(1 << 20, remaining))
          if not chunk:
            break
          remaining -= len(chunk)
        self.close_connection = True
        return self.reply(413, {"error": f"request of {self.headers.get('Content-Length')} bytes exceeds the "
                                         f"limit of {max_bytes}"})
      try:
        body = json.loads(self.rfile.read(length))
        if not isinstance(body, dict):
          raise BadRequest("the body must be a JSON object")
        self.reply(200, scorer.score(body))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        self.reply(400, {"error": f"not JSON: {e}"})
      except BadRequest as e:
        self.reply(400, {"error": str(e)})
      except Exception as e:  # a backend failure must not take the server down
        logging.exception("scoring failed")
        self.reply(500, {"error": f"{type(e).__name__}: {e}"})

  return ThreadingHTTPServer((host, port), Handler)
