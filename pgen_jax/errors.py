"""Every failure a user can cause and fix, and the exit code each one ends a command with.

The bottom floor: any module may raise these without importing the module that reports them. Each
message is the one line the user sees, naming the key, file, line or URL and what to do.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config key or command-line flag with a value that cannot work; the message names the key."""


class InputError(ValueError):
  """Bad command-line input other than the config (an unknown user or item, an unreadable file)."""


class RunStopped(RuntimeError):
  """A training stage stopped on purpose (non-finite steps, reward hacking); the message says why."""


class DataError(ValueError):
  """Input data that cannot be used; the message names the file (and line)."""


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as asked; the message names the file and tensors."""


class FetchError(RuntimeError):
  """A download that cannot be done (no network, 404, wrong checksum); the message names what and where."""


class AuthError(RuntimeError):
  """A service refused or lacks its credentials (the TMDB API key)."""


class ScorerUnavailable(RuntimeError):
  """The reward scorer process does not answer, or answers with an error."""


# (type, exit code, what the user reads before the message); the first match wins, so subclasses of
# OSError (FileNotFoundError, PermissionError) come before it.
EXIT_CODES = (
    (ConfigError, 2, "config error"),
    (InputError, 2, "bad input"),
    (RunStopped, 3, "stopped"),
    (DataError, 4, "data error"),
    (CheckpointError, 4, "checkpoint error"),
    (FileNotFoundError, 4, "missing file"),
    (PermissionError, 4, "permission denied"),
    (OSError, 4, "file error"),
    (FetchError, 5, "download failed"),
    (AuthError, 5, "refused"),
    (ScorerUnavailable, 6, "scorer unavailable"),
    (MemoryError, 1, "out of memory"),
)


def exit_code(e: BaseException) -> tuple[int, str]:
  """(exit code, what kind of error) for a failure, by what the user has to fix."""
  for cls, code, kind in EXIT_CODES:
    if isinstance(e, cls):
      return code, kind
  return 1, f"internal error ({type(e).__name__}; rerun with --debug for the traceback)"


def one_line(e: BaseException) -> str:
  """The message as one line: multi-line library messages folded, so the user reads a single line."""
  return " ".join(str(e).split())
