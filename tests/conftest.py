"""Test set-up: 8 fake CPU devices for the sharding tests (must be set before jax is imported); and,
where torch is not installed (CI's Python 3.12 pass, README), the tests that need it reported as
skipped, each with the import chain that needs torch, rather than failing or left out silently."""

import ast
import functools
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAVE_TORCH = importlib.util.find_spec("torch") is not None
TORCH_MODULES = {"torch", "pytorch_msssim", "safetensors.torch"}  # torch itself, or importing it at import
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _local_file(name: str) -> Path | None:
  """The file of a module of this checkout (tests/ helpers, pgen_jax, converters, configs), else None."""
  parts = name.split(".")
  for base in (HERE, ROOT):
    for f in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
      if f.is_file() and f != HERE / "conftest.py":
        return f
  return None


@functools.cache
def _imports(path: Path) -> tuple[str, ...]:
  """The modules that importing `path` imports first: its module-level imports and their packages."""
  out = []
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    out += [".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)]
  return tuple(dict.fromkeys(out))


def torch_chain(path: Path) -> str | None:
  """How importing the module at `path` imports torch (module-level imports, followed through this
  checkout's own modules), as 'a -> b -> torch'; None if it does not."""
  seen, todo = {path}, [(path, "")]
  while todo:
    f, chain = todo.pop(0)
    for name in _imports(f):
      if name in TORCH_MODULES:
        return chain + name
      g = _local_file(name)
      if g is not None and g not in seen:
        seen.add(g)
        todo.append((g, f"{chain}{name} -> "))
  return None


class _NeedsTorch(pytest.Module):
  """A test module that imports torch: one skipped collection, with the reason, instead of its tests."""
  chain = ""

  def collect(self):
    pytest.skip(f"needs torch, which is not installed ({self.chain})", allow_module_level=True)


def pytest_pycollect_makemodule(module_path, parent):
  if not HAVE_TORCH and (chain := torch_chain(Path(module_path).resolve())):
    module = _NeedsTorch.from_parent(parent, path=module_path)
    module.chain = chain
    return module
  return None


def pytest_configure(config):
  config.addinivalue_line("markers", "requires_torch: the test imports torch inside (skipped without torch)")


def pytest_collection_modifyitems(config, items):
  if HAVE_TORCH:
    return
  skip = pytest.mark.skip(reason="needs torch, which is not installed")
  for item in items:
    if item.get_closest_marker("requires_torch"):
      item.add_marker(skip)
