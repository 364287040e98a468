"""What the log shows: our progress at INFO, everyone's warnings; the libraries' INFO lines, progress bars
and prints (orbax, tensorflow-datasets) only when asked for (the commands' --library_logs).
"""

from __future__ import annotations

import contextlib
import io
import logging as pylogging
from pathlib import Path

from absl import logging

_OURS = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "converters"))
_OUR_METRICS = "clu/metric_writers/logging_writer.py"  # clu writes the metric lines we hand it
# Library warnings that warn of nothing: tensorflow-datasets names each of our (custom) builder configs
# every time a builder is made, a dozen lines per stage.
_NOT_WARNINGS = ("Using custom data configuration",)
_library = True  # until a command says otherwise, as a library we hide nothing


class _OursOnly(pylogging.Filter):
  """Below WARNING, only records our code logged (absl names every record's logger 'absl', so the source
  file tells whose it is)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    ours = (record.name.startswith("pgen_jax") or record.pathname.startswith(_OURS)
            or record.pathname.endswith(_OUR_METRICS))
    if not ours and str(record.msg).startswith(_NOT_WARNINGS):
      return False
    return ours or record.levelno >= pylogging.WARNING


def configure(*, library: bool) -> None:
  """INFO and up; below WARNING only ours unless `library`."""
  global _library
  _library = library
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  for f in [f for f in handler.filters if isinstance(f, _OursOnly)]:
    handler.removeFilter(f)
  if not library:
    handler.addFilter(_OursOnly())


@contextlib.contextmanager
def quiet_library():
  """Around library calls that print to stdout or draw progress bars (tensorflow-datasets' builds): their
  output is dropped unless library logs are on, so stdout keeps only what our commands print."""
  if _library:
    yield
    return
  import tensorflow_datasets as tfds  # lazy: only the callers that build stores have it loaded already
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(True)
