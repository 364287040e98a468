"""What every command line of ours shares: flags read with one-line errors, logs that show our progress,
and failures reported as one line with the exit code errors.EXIT_CODES gives them.

  app.run(main, flags_parser=cli.parse_flags)   # then, in main: cli.show_logs(); ...; cli.fail(e)
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import sys
from pathlib import Path

from absl import flags

from pgen_jax import logs
from pgen_jax.errors import exit_code, one_line

_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "Show the INFO lines of the libraries we use (orbax, "
                                  "tensorflow-datasets, jax); by default only ours and everyone's warnings.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")

def finite_float(name: str, default: float, help_text: str, **kw):
  """A float flag that refuses nan and inf (absl's own float flags take them)."""
  holder = flags.DEFINE_float(name, default, help_text, **kw)
  flags.register_validator(name, lambda v: v is None or math.isfinite(v), message="must be a finite number")
  return holder


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag is one line (naming the flag, and for an unknown --config.key the
  closest known key) and exit 2, not a usage dump or three chained tracebacks."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    print(f"flag error: {_unknown_config_key(argv) or one_line(e)}", file=sys.stderr)
    sys.exit(2)


def _unknown_config_key(argv: list[str]) -> str | None:
  """'--config.a.b: no such key (did you mean a.c?)' for the first override the config file lacks."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not path or not overrides:
    return None
  try:
    spec = importlib.util.spec_from_file_location("_pgen_config", path.split(":", 1)[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    known = _keys(module.get_config())
  except Exception:  # the config file itself is bad: absl's own message says how
    return None
  for key in overrides:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1, cutoff=0.0)[0]
      return f"--config.{key}: no such key in {path}; the closest is --config.{close}"
  return None


def _keys(node, prefix: str = "") -> list[str]:
  """Every dotted key of a ConfigDict, sections included."""
  out = []
  for k, v in node.items():
    out.append(prefix + k)
    if hasattr(v, "items"):
      out += _keys(v, prefix + k + ".")
  return out


def show_logs() -> None:
  """INFO and up from our modules; the libraries' INFO lines and progress bars (about half of a real run's
  log) only with --library_logs."""
  logs.configure(library=_LIBRARY_LOGS.value)


def fail(e: BaseException, prefix: str = "") -> None:
  """Ends the command for a failure: one line and its exit code, or the traceback with --debug."""
  if _DEBUG.value:
    raise e
  if isinstance(e, KeyboardInterrupt):
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  code, kind = exit_code(e)
  print(f"{prefix if code == 2 else ''}{kind}: {one_line(e)}", file=sys.stderr)
  sys.exit(code)
