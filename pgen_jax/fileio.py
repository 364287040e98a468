"""Writing outputs so that a crash never leaves a half-written one: temporary sibling, then rename.

tempfile creates its files 0600 and directories 0700 whatever the umask; outputs are made to follow
the umask (as open() and mkdir() would), so that others in the group can read a shared run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def follow_umask(path: str | os.PathLike) -> None:
  """Gives a file or directory created by tempfile the mode open()/mkdir() would have given it."""
  os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary directory beside `dst`, renamed to `dst` when the block succeeds.

  On any error the temporary directory is removed and `dst` does not appear. An existing `dst` is an
  error (FileExistsError).
  """
  dst = Path(dst).resolve()
  if dst.exists():
    raise FileExistsError(f"{dst} already exists; choose a new output directory")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
  try:
    follow_umask(tmp)
    yield tmp
    os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    follow_umask(tmp)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_json(path: str | os.PathLike, data) -> None:
  write_bytes(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def tree_digest(path: str | os.PathLike, read_below: int = 1 << 20) -> str:
  """A digest of what a file or directory holds: every file's relative path and size, the contents of
  those under `read_below` bytes (metadata, configs) and the modification time of larger ones (weights,
  not read: a 7B checkpoint would take minutes to hash). Rewriting a checkpoint changes it."""
  root = Path(path)
  h = hashlib.sha256()
  files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
  for f in files:
    st = f.stat()
    h.update(f"{f.relative_to(root) if f != root else f.name}\0{st.st_size}\0".encode())
    h.update(f.read_bytes() if st.st_size < read_below else str(st.st_mtime_ns).encode())
  return h.hexdigest()[:16]
