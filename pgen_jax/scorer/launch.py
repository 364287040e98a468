"""The job's own scorer: started when the `profile` or `nima` reward has weight and nothing answers at
reward_models.scorer_url.

The child (`python -m pgen_jax.scorer serve`) listens on 127.0.0.1 at the URL's port with a fresh
random token (passed in its environment, never on a command line), logs to <workdir>/scorer.log, is
health-checked before the first step, restarted when it dies (up to `max_restarts` times), and
stopped when the job ends (stop_all, also at exit).

Sharing one accelerator with JAX: JAX preallocates 75% of GPU memory at start, so torch would run out.
Give the scorer room by starting the job with XLA_PYTHON_CLIENT_MEM_FRACTION (e.g. 0.6; the scorer's
Qwen2.5-VL-7B needs ~17 GB in bf16) or XLA_PYTHON_CLIENT_PREALLOCATE=false, or put the scorer on
another device: reward_models.scorer_device "cpu" (no GPU for the child) or "cuda:N" (the child sees only GPU N,
as its cuda:0). "" lets torch take the first visible GPU.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import jax

from pgen_jax.errors import ScorerUnavailable
from pgen_jax.scorer.client import ScorerClient

_RUNNING: list["ScorerProcess"] = []


def answers(url: str, timeout: float = 2.0) -> bool:
  """Whether an HTTP server answers at url (any status: a scorer with another token also counts)."""
  try:
    with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout):
      return True
  except urllib.error.HTTPError:
    return True
  except (urllib.error.URLError, OSError):
    return False


class ScorerProcess:
  def __init__(self, url: str, *, nima: str = "", qwen: str = "", device: str = "", log: str | Path = "scorer.log",
               startup_timeout: float = 900.0, max_restarts: int = 3):
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
      raise ScorerUnavailable(f"reward_models.scorer_url: {url} is not http://127.0.0.1:<port>; the job starts a scorer "
                              "only on this machine. Start it there yourself, or use a local URL")
    if not (nima or qwen):
      raise ScorerUnavailable(f"nothing answers at {url}, and neither reward_models.scorer_nima nor reward_models.scorer_qwen is "
                              "set for the job to start one; set them (the fetch stage downloads them)")
    for key, path in (("reward_models.scorer_nima", nima), ("reward_models.scorer_qwen", qwen)):
      if path and not Path(path).exists():
        raise ScorerUnavailable(f"{key}: {path} does not exist; run the fetch stage or set the key")
    self.url, self.port = f"http://127.0.0.1:{parts.port}", parts.port
    self.nima, self.qwen, self.device, self.log = nima, qwen, device, Path(log)
    self.startup_timeout, self.max_restarts = startup_timeout, max_restarts
    self.token = secrets.token_urlsafe(24)
    self.proc: subprocess.Popen | None = None
    self.restarts = 0
    self.lock = threading.Lock()
    self._stop = threading.Event()

  def _env(self) -> dict:
    env = {**os.environ, "PGEN_SCORER_TOKEN": self.token}
    if self.device == "cpu":
      env["CUDA_VISIBLE_DEVICES"] = ""
    elif self.device.startswith("cuda:"):
      env["CUDA_VISIBLE_DEVICES"] = self.device.split(":", 1)[1]
    elif self.device:
      raise ScorerUnavailable(f"reward_models.scorer_device: {self.device!r}; use '', 'cpu' or 'cuda:N'")
    env.pop("JAX_PLATFORMS", None)
    return env

  def start(self) -> "ScorerProcess":
    cmd = [sys.executable, "-m", "pgen_jax.scorer", "serve", "--host=127.0.0.1", f"--port={self.port}"]
    cmd += [f"--nima={self.nima}"] if self.nima else []
    cmd += [f"--qwen={self.qwen}"] if self.qwen else []
    self.log.parent.mkdir(parents=True, exist_ok=True)
    with open(self.log, "ab") as log:
      self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=self._env())
    logging.info("started the scorer (pid %d) at %s; log %s", self.proc.pid, self.url, self.log)
    self.wait_healthy()
    if self not in _RUNNING:
      _RUNNING.append(self)
      threading.Thread(target=self._watch, daemon=True).start()
    return self

  def _tail(self) -> str:
    try:
      lines = self.log.read_text(errors="replace").strip().splitlines()
    except OSError:
      return ""
    return lines[-1][:300] if lines else ""

  def wait_healthy(self) -> None:
    client = ScorerClient(self.url, token=self.token, timeout=5.0, retries=0)
    deadline = time.monotonic() + self.startup_timeout
    while time.monotonic() < deadline:
      if self.proc is not None and self.proc.poll() is not None:
        raise ScorerUnavailable(f"the scorer started at {self.url} exited with code {self.proc.returncode}: "
                                f"{self._tail()!r} (full log: {self.log})")
      try:
        client.health()
        return
      except ScorerUnavailable:
        time.sleep(0.25)
    raise ScorerUnavailable(f"the scorer started at {self.url} did not answer within {self.startup_timeout:.0f} s "
                            f"(log: {self.log})")

  def ensure_running(self) -> bool:
    """Restarts a dead child; True when it did."""
    with self.lock:
      if self._stop.is_set() or self.proc is None or self.proc.poll() is None:
        return False
      if self.restarts >= self.max_restarts:
        raise ScorerUnavailable(f"the scorer at {self.url} died {self.restarts + 1} times; last: {self._tail()!r} "
                                f"(log: {self.log})")
      self.restarts += 1
      logging.warning("the scorer (pid %d) exited with code %s; restarting (%d/%d)", self.proc.pid,
                      self.proc.returncode, self.restarts, self.max_restarts)
      self.start()
      return True

  def _watch(self) -> None:
    while not self._stop.wait(1.0):
      try:
        self.ensure_running()
      except ScorerUnavailable as e:  # the client reports it on its next request
        logging.error("%s", e)
        return

  def stop(self) -> None:
    self._stop.set()
    if self.proc is not None and self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    if self in _RUNNING:
      _RUNNING.remove(self)


class ManagedClient(ScorerClient):
  """A client of a ScorerProcess: a request that fails while the child is being restarted waits for it."""

  def __init__(self, process: ScorerProcess, **kw):
    super().__init__(process.url, token=process.token, **kw)
    self.process = process

  def _request(self, path: str, body: dict | None = None) -> dict:
    try:
      return super()._request(path, body)
    except ScorerUnavailable:
      if self.process.ensure_running() or self.process.restarts:
        self.process.wait_healthy()
        return super()._request(path, body)
      raise


def stop_all() -> None:
  for p in list(_RUNNING):
    p.stop()


atexit.register(stop_all)


def scorer_client(section, workdir: str | Path) -> ScorerClient:
  """The client of the scorer at section.scorer_url (the reward_models section): the one answering there, else
  one this job starts (when section.scorer_start), health-checked before it is returned."""
  if answers(section.scorer_url):
    try:  # a wrong token is a one-line error now, not at the first step
      ScorerClient(section.scorer_url, token=section.scorer_token, timeout=10.0, retries=0).health()
    except ScorerUnavailable as e:
      if "(401)" in str(e):
        raise ScorerUnavailable(f"{e}; set reward_models.scorer_token to the scorer's token") from None
      logging.warning("the scorer at %s answers, but not its health check: %s", section.scorer_url, e)
    return ScorerClient(section.scorer_url, token=section.scorer_token)
  if not section.scorer_start:
    raise ScorerUnavailable(f"nothing answers at reward_models.scorer_url {section.scorer_url}; start the scorer "
                            "(python -m pgen_jax.scorer serve ...) or set reward_models.scorer_start=True")
  _warn_about_memory(section.scorer_device)
  proc = ScorerProcess(section.scorer_url, nima=section.scorer_nima, qwen=section.scorer_qwen,
                       device=section.scorer_device, log=Path(workdir) / "scorer.log").start()
  return ManagedClient(proc)


def _warn_about_memory(device: str) -> None:
  if device == "cpu" or "XLA_PYTHON_CLIENT_MEM_FRACTION" in os.environ or \
     os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() == "false":
    return
  if jax.default_backend() == "gpu":
    logging.warning("the scorer shares the GPU with JAX, which preallocated 75%% of its memory; if the scorer "
                    "runs out, start the job with XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 or set reward_models.scorer_device")
