"""The import graph points one way: converters -> pgen_jax, train and eval side by side, no cycles.

Every module of pgen_jax/ and converters/ is parsed (ast, imports inside functions included,
relative imports resolved); `from pkg import name` is an edge to pkg.name when that is a module,
else to pkg. Plus: importing the model, the sampler and the GRPO maths keeps torch, TensorFlow and
converters out of the process.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pgen_jax", "converters")


def _modules() -> dict[str, Path]:
  mods = {}
  for pkg in PACKAGES:
    for path in sorted((ROOT / pkg).rglob("*.py")):
      parts = list(path.relative_to(ROOT).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts.pop()
      mods[".".join(parts)] = path
  return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
  """Modules of ours that `name` imports anywhere in its body."""
  is_pkg = path.name == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".") if is_pkg else name.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    else:
      continue
    for target in targets:
      while target and target not in mods:  # `import a.b.c` of a non-module name: its package
        target = target.rpartition(".")[0]
      if target and target != name:
        out.add(target)
  return out


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  return {name: _imports(name, path, mods) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, comps = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        comps.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return comps


def _within(name: str, pkg: str) -> bool:
  return name == pkg or name.startswith(pkg + ".")


def test_graph_is_parsed():
  # The walk sees real edges, function-level ones included (main imports its stages on use).
  graph = _graph()
  assert "pgen_jax.models.janus" in graph and "converters.janus" in graph
  assert "pgen_jax.models.llama" in graph["pgen_jax.models.janus"]
  assert any(_within(m, "pgen_jax.train") for m in graph["pgen_jax.main"])


def test_no_import_cycles():
  cycles = _cycles(_graph())
  assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_pgen_jax_does_not_import_converters():
  bad = sorted(f"{a} -> {b}" for a, deps in _graph().items() if _within(a, "pgen_jax")
               for b in deps if _within(b, "converters"))
  assert not bad, "pgen_jax imports converters:\n" + "\n".join(bad)


def test_train_and_eval_do_not_import_each_other():
  bad = []
  for a, deps in _graph().items():
    for src, dst in (("pgen_jax.train", "pgen_jax.eval"), ("pgen_jax.eval", "pgen_jax.train")):
      if _within(a, src):
        bad += [f"{a} -> {b}" for b in sorted(deps) if _within(b, dst)]
  assert not bad, "train <-> eval imports:\n" + "\n".join(bad)


def test_model_sampler_and_grpo_stay_light():
  code = ("import sys\n"
          "import pgen_jax.models, pgen_jax.sampling, pgen_jax.train.grpo\n"
          "print(' '.join(m for m in ('torch', 'tensorflow', 'converters') if m in sys.modules))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "", f"loaded: {out.stdout.strip()}"


def test_user_facing_errors_live_on_the_bottom_floor():
  from pgen_jax import errors

  graph = _graph()
  assert graph["pgen_jax.errors"] == set()
  # readers raise FetchError without climbing to the fetch package
  bad = sorted(f"{a} -> {b}" for a, deps in graph.items() if _within(a, "pgen_jax.data")
               for b in deps if _within(b, "pgen_jax.fetch"))
  assert not bad, bad
  # every error type a user can cause has its own exit code, not the internal-error 1
  for cls in (errors.ConfigError, errors.InputError, errors.RunStopped, errors.DataError, errors.CheckpointError,
              errors.FetchError, errors.AuthError, errors.ScorerUnavailable):
    assert errors.exit_code(cls("x"))[0] > 1, cls
  assert errors.exit_code(KeyError("x"))[0] == 1


def test_readme_layout_names_every_module():
  text = (ROOT / "README.md").read_text()
  layout = text[text.index("## Layout"):]
  layout = layout[:layout.index("```", layout.index("```") + 3)]
  missing = []
  for path in sorted((ROOT / "pgen_jax").rglob("*.py")):
    rel = path.relative_to(ROOT / "pgen_jax")
    if path.name == "__init__.py" or "__pycache__" in rel.parts:
      continue
    if path.name not in layout or (len(rel.parts) > 1 and f"{rel.parts[0]}/" not in layout):
      missing.append(str(rel))
  assert not missing, f"README's Layout section does not name: {missing}"
