"""Model repositories from the Hugging Face Hub (or a mirror: fetch.hf_endpoint / HF_ENDPOINT).

A repository is downloaded with huggingface_hub.snapshot_download into `<dest>.partial` (only the
files matching `allow`, at the pinned revision; an interrupted file resumes from where it stopped,
in this run or the next) and renamed to `dest` when complete, so `dest` is either absent or whole.
A lock file beside `dest` keeps two processes from downloading the same repository at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import urllib.parse
from pathlib import Path

import filelock
from huggingface_hub import errors, snapshot_download

from pgen_jax.errors import FetchError
from pgen_jax.fileio import write_json

MARKER = ".pgen_fetch.json"  # what was fetched: repo, revision


def endpoint(configured: str = "") -> str:
  return (configured or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _reason(e: BaseException) -> str:
  """The cause a user can act on, from huggingface_hub's (chained) exceptions."""
  chain, seen = [], e
  while seen is not None and len(chain) < 10:
    chain.append(seen)
    seen = seen.__cause__ or seen.__context__
  if any(isinstance(x, errors.OfflineModeIsEnabled) for x in chain):
    return "HF_HUB_OFFLINE is set; unset it to download, or put the files there yourself"
  for x in chain:
    name = type(x).__name__
    if "Connect" in name or "Timeout" in name or isinstance(x, (ConnectionError, TimeoutError)):
      return f"cannot connect ({name}: {x}); check the network or set HF_ENDPOINT to a reachable mirror"
  for x in chain:
    if isinstance(x, errors.RevisionNotFoundError):
      return "revision not found (404); check the pinned revision"
    if isinstance(x, (errors.RepositoryNotFoundError, errors.RemoteEntryNotFoundError)):
      return "not found (404); check the repository name, or log in (HF_TOKEN) if it is gated"
    if isinstance(x, errors.GatedRepoError):
      return "gated: accept its licence on the Hub and set HF_TOKEN"
  first = str(chain[0]).splitlines()[0] if str(chain[0]) else type(chain[0]).__name__
  return f"{type(chain[0]).__name__}: {first}"


PROXIES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def unreachable(url: str, timeout: float = 10.0) -> str | None:
  """Why nothing answers at `url`'s host and port (one TCP connect), or None: huggingface_hub retries a refused
  connection five times over 23 s before it gives up. Not checked where a proxy is configured (the proxy, not
  the host, is what a connection reaches) nor in offline mode (its own error says so)."""
  if any(os.environ.get(k) for k in PROXIES) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
    return None
  parts = urllib.parse.urlsplit(url)
  try:
    socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                             timeout=timeout).close()
  except OSError as e:
    return f"cannot connect ({type(e).__name__}: {e}); check the network or set HF_ENDPOINT to a reachable mirror"
  return None


def download_repo(repo: str, revision: str, dest: str | Path, *, allow: list[str] | None = None,
                  hf_endpoint: str = "", lock_timeout: float = 3600.0) -> Path:
  """dest holding `repo` at `revision` (only files matching `allow`); a no-op when dest exists."""
  dest = Path(dest)
  if dest.exists():
    return dest
  dest.parent.mkdir(parents=True, exist_ok=True)
  url = endpoint(hf_endpoint)
  lock = filelock.FileLock(str(dest) + ".lock")
  try:
    lock.acquire(timeout=lock_timeout)
  except filelock.Timeout:
    raise FetchError(f"{dest}: another process holds {lock.lock_file} (downloading {repo}); wait for it, or "
                     "remove the lock file if no such process runs") from None
  try:
    if dest.exists():  # the other process finished it
      return dest
    partial = Path(str(dest) + ".partial")
    logging.info("downloading %s@%s from %s to %s", repo, revision, url, dest)
    if reason := unreachable(url):
      raise FetchError(f"{url}/{repo} (revision {revision}) -> {dest}: {reason}")
    try:
      snapshot_download(repo, revision=revision, local_dir=partial, allow_patterns=allow, endpoint=url)
    except Exception as e:  # huggingface_hub's errors are many; the user needs what and where
      raise FetchError(f"{url}/{repo} (revision {revision}) -> {dest}: {_reason(e)}") from e
    files = [p for p in partial.rglob("*") if p.is_file() and ".cache" not in p.relative_to(partial).parts]
    if not files:
      raise FetchError(f"{url}/{repo} (revision {revision}): no file matches {allow}; check fetch.* allow patterns")
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata, done with
    write_json(partial / MARKER, {"repo": repo, "revision": revision, "endpoint": url, "allow": allow})
    os.replace(partial, dest)
    logging.info("%s: %d files", dest, len(files))
    return dest
  finally:
    lock.release()


def download_file(repo: str, revision: str, filename: str, dest: str | Path, *, hf_endpoint: str = "") -> Path:
  """One file of a repository (e.g. NIMA's weights) to `dest`, atomically."""
  dest = Path(dest)
  if dest.exists():
    return dest
  folder = download_repo(repo, revision, Path(str(dest) + ".repo"), allow=[filename], hf_endpoint=hf_endpoint)
  os.replace(folder / filename, dest)
  shutil.rmtree(folder)
  return dest


def describe(dest: str | Path) -> dict:
  marker = Path(dest) / MARKER
  return json.loads(marker.read_text()) if marker.exists() else {}
