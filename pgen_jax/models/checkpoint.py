"""Loading and saving Janus: our orbax checkpoints and Hugging Face directories.

Our checkpoint directory holds `pgen_config.json` (architecture + dtype), `params/` (orbax) and
`hf/` (the source config.json and tokenizer/processor files, restored on export to HF).
Every tensor goes straight into its sharding on the mesh; nothing is materialised on one device.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.fileio import atomic_directory
from pgen_jax.models.config import JanusConfig
from pgen_jax.models.hf import HFCheckpoint, hf_key
from pgen_jax.models.hf_params import majority_float_dtype, place
from pgen_jax.models.janus import Janus
from pgen_jax.models.sharding import make_mesh, param_shardings

FORMAT = "pgen_jax.janus/2"  # /2: the decoder layers' parameters stacked, language_model/layers/<param> (L, ...)
LEGACY = "pgen_jax.janus/1"  # one subtree per decoder layer, language_model/layers/<i>/<param>
CONFIG_FILE = "pgen_config.json"


def abstract_janus(config: JanusConfig, *, dtype=None, param_dtype=jnp.float32, **options):
  """(graphdef, state of ShapeDtypeStructs) without allocating any parameter. options: Janus's
  remat and attention_impl."""
  model = nnx.eval_shape(lambda: Janus(config, nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, **options))
  return nnx.split(model)


def count_params(config: JanusConfig) -> int:
  _, state = abstract_janus(config)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def is_pgen_checkpoint(path: str | os.PathLike) -> bool:
  return (Path(path) / CONFIG_FILE).exists()


def load_janus(path: str | os.PathLike, *, mesh=None, dtype=None, param_dtype=None, remat="none",
               attention_impl: str = "auto") -> Janus:
  """Janus from our checkpoint or from a transformers/deepseek Janus directory.

  mesh: where parameters live (default: all local devices on the fsdp axis). dtype: compute dtype.
  param_dtype: storage dtype (default: the checkpoint's). remat, attention_impl: the model's options
  (Janus).
  """
  mesh = mesh if mesh is not None else make_mesh()
  options = dict(remat=remat, attention_impl=attention_impl)
  if is_pgen_checkpoint(path):
    return _load_ours(Path(path), mesh, dtype, param_dtype, options)
  return from_hf_checkpoint(HFCheckpoint(path), mesh=mesh, dtype=dtype, param_dtype=param_dtype, **options)


def from_hf_checkpoint(ckpt: HFCheckpoint, *, mesh, dtype=None, param_dtype=None, **options) -> Janus:
  param_dtype = param_dtype if param_dtype is not None else majority_float_dtype(ckpt.tensors)
  graphdef, abstract = abstract_janus(ckpt.config, dtype=dtype, param_dtype=param_dtype, **options)
  return place(ckpt.tensors, graphdef, abstract, mesh, hf_key, str(ckpt.dir))


def _load_ours(path: Path, mesh, dtype, param_dtype, options) -> Janus:
  meta = json.loads((path / CONFIG_FILE).read_text())
  if meta.get("format") not in (FORMAT, LEGACY):
    raise ValueError(f"{path / CONFIG_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
  config = JanusConfig.from_dict(meta["model"])
  stored = jnp.dtype(meta["param_dtype"])
  graphdef, abstract = abstract_janus(config, dtype=dtype, param_dtype=stored, **options)
  pure = nnx.to_pure_dict(abstract)
  shardings = param_shardings(pure, mesh)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), pure, shardings)
  with ocp.StandardCheckpointer() as ckptr:
    if meta["format"] == LEGACY:
      values = _restore_per_layer(ckptr, path.resolve() / "params", target)
    else:
      values = ckptr.restore(path.resolve() / "params", target)
  if param_dtype is not None and jnp.dtype(param_dtype) != stored:
    values = jax.tree.map(lambda v: v.astype(param_dtype), values)
    graphdef, abstract = abstract_janus(config, dtype=dtype, param_dtype=param_dtype, **options)
  nnx.replace_by_pure_dict(abstract, values)
  return nnx.merge(graphdef, abstract)


def _restore_per_layer(ckptr, params: Path, target: dict) -> dict:
  """A LEGACY checkpoint's values in today's layout: each layer restored on its own, then stacked."""
  stacked = target["language_model"]["layers"]
  n = jax.tree.leaves(stacked)[0].shape[0]
  one = lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype,
                                       sharding=NamedSharding(x.sharding.mesh, P(*x.sharding.spec[1:])))
  per_layer = {i: jax.tree.map(one, stacked) for i in range(n)}
  values = ckptr.restore(params, {**target, "language_model": {**target["language_model"], "layers": per_layer}})
  layers = values["language_model"]["layers"]
  values["language_model"]["layers"] = jax.tree.map(
      lambda x, *ws: jax.jit(lambda *w: jnp.stack(w), out_shardings=x.sharding)(*ws), stacked,
      *[layers[i] for i in range(n)])
  return values


def save_janus(model: Janus, path: str | os.PathLike, *, hf_files: str | os.PathLike | None = None) -> None:
  """Writes our checkpoint to `path` atomically (a temporary sibling directory, then a rename).

  hf_files: a HF checkpoint directory whose config.json and tokenizer/processor files are kept.
  """
  if jax.process_count() > 1:
    _save_janus_multihost(model, Path(path).resolve(), hf_files)
    return
  with atomic_directory(path) as tmp:
    _write_janus(model, tmp, hf_files)


def _write_janus(model: Janus, tmp: Path, hf_files, primary: bool = True) -> None:
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  # Every parameter of a Janus has the model's param_dtype.
  meta = {"format": FORMAT, "model": model.config.to_dict(),
          "param_dtype": jnp.dtype(jax.tree.leaves(state)[0].dtype).name}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp / "params", state)
    ckptr.wait_until_finished()
  if primary:
    if hf_files is not None:
      copy_hf_side_files(Path(hf_files), tmp / "hf")
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def _save_janus_multihost(model: Janus, path: Path, hf_files) -> None:
  """save_janus on several processes: orbax's save is collective, every process writing its shards into
  the same directory (each in a temporary directory of its own, as atomic_directory makes, the processes
  waited for each other for ever); process 0 writes the rest and renames it, and no process goes on
  before `path` exists (the next stage loads it on all of them)."""
  from jax.experimental import multihost_utils  # lazy: one process never needs it
  if path.exists():
    raise FileExistsError(f"{path} already exists; choose a new output directory")
  tmp = path.parent / f".{path.name}.tmp-multihost"
  primary = jax.process_index() == 0
  if primary:
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    tmp.mkdir(parents=True)
  multihost_utils.sync_global_devices(f"save_janus {path}: start")
  _write_janus(model, tmp, hf_files, primary)
  multihost_utils.sync_global_devices(f"save_janus {path}: written")
  if primary:
    os.rename(tmp, path)
  multihost_utils.sync_global_devices(f"save_janus {path}: renamed")


SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "preprocessor_config.json", "processor_config.json",
              "chat_template.jinja", "chat_template.json")


def copy_hf_side_files(src: Path, dst: Path) -> None:
  dst.mkdir(parents=True, exist_ok=True)
  for name in SIDE_FILES:
    if (src / name).exists():
      shutil.copy2(src / name, dst / name)
