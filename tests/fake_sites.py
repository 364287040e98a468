"""Local servers on 127.0.0.1 that play the Hugging Face Hub (the routes huggingface_hub's
snapshot_download / hf_hub_download call) and a static download site (files.grouplens.org): ETag,
X-Repo-Commit, Content-Length, Range (206), 404 with the Hub's X-Error-Code, and connections broken
mid-file on request."""

from __future__ import annotations

import collections
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeSites:
  """repos: {repo id: {path: bytes}}; files: {url path: bytes}; break_once: url paths whose first GET
  sends half its body and closes the connection."""

  def __init__(self, repos=None, files=None, break_once=()):
    self.repos, self.files = repos or {}, files or {}
    self.break_once = set(break_once)
    self.requests = []  # (method, path, Range header)
    self.hits = collections.Counter()
    sites = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *a):
        pass

      def send(self, code, body=b"", headers=(), ctype="application/octet-stream", head=False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
          self.send_header(k, v)
        if ("Content-Length", None) not in headers and not any(k == "Content-Length" for k, _ in headers):
          self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
          self.wfile.write(body)

      def missing(self, code_name="RepoNotFound", head=False):
        self.send(404, b'{"error": "not found"}', [("X-Error-Code", code_name)], "application/json", head)

      def serve_bytes(self, data: bytes, extra=(), head=False):
        path = urlparse(self.path).path
        etag = hashlib.sha1(data).hexdigest()
        headers = [("ETag", f'"{etag}"'), ("Accept-Ranges", "bytes"), *extra]
        rng = self.headers.get("Range")
        if head:
          return self.send(200, data, headers, head=True)
        start = 0
        if rng:
          m = re.fullmatch(r"bytes=(\d+)-", rng)
          start = int(m.group(1))
          if start >= len(data):
            return self.send(416, b"", [("Content-Range", f"bytes */{len(data)}")])
          headers.append(("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"))
        body = data[start:]
        if path in sites.break_once:
          sites.break_once.discard(path)
          self.send_response(206 if rng else 200)
          for k, v in headers:
            self.send_header(k, v)
          self.send_header("Content-Length", str(len(body)))
          self.end_headers()
          self.wfile.write(body[:len(body) // 2])
          self.wfile.flush()
          self.close_connection = True
          self.connection.shutdown(2)
          return
        self.send(206 if rng else 200, body, headers)

      def route(self, head=False):
        url = urlparse(self.path)
        path = unquote(url.path)
        sites.requests.append((self.command, path, self.headers.get("Range")))
        sites.hits[path] += 1
        m = re.fullmatch(r"/api/models/(.+?/.+?)/(revision|tree)/([^/]+)(/.*)?", path)
        if m:
          repo, kind = m.group(1), m.group(2)
          if repo not in sites.repos:
            return self.missing(head=head)
          files = sites.repos[repo]
          if kind == "revision":
            body = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": p} for p in sorted(files)]}
          else:
            body = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in sorted(files.items())]
          return self.send(200, json.dumps(body).encode(), ctype="application/json", head=head)
        m = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
        if m:
          repo, _, name = m.groups()
          if repo not in sites.repos:
            return self.missing(head=head)
          if name not in sites.repos[repo]:
            return self.missing("EntryNotFound", head=head)
          return self.serve_bytes(sites.repos[repo][name], [("X-Repo-Commit", COMMIT)], head=head)
        if path in sites.files:
          return self.serve_bytes(sites.files[path], head=head)
        return self.send(404, b"not found", head=head)

      def do_GET(self):
        self.route()

      def do_HEAD(self):
        self.route(head=True)

    self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()
    self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

  def close(self):
    self.server.shutdown()
    self.server.server_close()


def closed_port_url() -> str:
  """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
  import socket
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  port = s.getsockname()[1]
  s.close()
  return f"http://127.0.0.1:{port}"


def zip_folder(folder: Path, top: str) -> bytes:
  """folder's files zipped under `top/`, as the MovieLens archives are."""
  import io
  import zipfile
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for p in sorted(Path(folder).rglob("*")):
      if p.is_file():
        z.write(p, f"{top}/{p.relative_to(folder)}")
  return buf.getvalue()
