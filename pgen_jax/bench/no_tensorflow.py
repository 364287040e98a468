"""Runs a module as if TensorFlow were not installed, as on the accelerator VM's image:

  python -m pgen_jax.bench.no_tensorflow pgen_jax.main --config=configs/accel_run1.py:tiny ...

Every import finder is wrapped so that it does not find tensorflow (or a submodule): importing it
raises ModuleNotFoundError, importlib.util.find_spec("tensorflow") is None and "tensorflow" never
enters sys.modules, as where it is not installed (libraries check all three), so code that needs it
takes its no-TensorFlow path here too. accelerator.sh's dry run runs run 1's stages this way.
"""

from __future__ import annotations

import runpy
import sys


def _hidden(name: str) -> bool:
  return name == "tensorflow" or name.startswith("tensorflow.")


class _Without:
  """An import finder that finds what the one it wraps finds, except tensorflow."""

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    return None if _hidden(name) else self._finder.find_spec(name, path, target)

  def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
    return getattr(self._finder, attr)


def main() -> None:
  if len(sys.argv) < 2:
    sys.exit("usage: python -m pgen_jax.bench.no_tensorflow MODULE [ARGS...]")
  if any(map(_hidden, sys.modules)):
    sys.exit("pgen_jax.bench.no_tensorflow: tensorflow is already imported")
  sys.meta_path[:] = [_Without(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
  module, sys.argv = sys.argv[1], sys.argv[1:]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
