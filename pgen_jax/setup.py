"""What every stage builds from the config: the mesh, the model (with the vq stage's tokenizer when
it ran), the newest training result."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from pgen_jax.errors import ConfigError
from pgen_jax.models import Janus, load_janus, make_mesh, place_on_mesh, preset
from pgen_jax.models.checkpoint import CONFIG_FILE, is_pgen_checkpoint
from pgen_jax.models.config import JanusConfig


def use_compile_cache(path: str) -> None:
  """Keeps compiled XLA programs under `path` (JAX's persistent compilation cache): a resumed or repeated
  run, and a stage that compiles the same program again (eval's generators), load them instead of
  compiling; on 2 CPU cores the demo's programs take about two minutes to compile. Call before the
  first compile."""
  if not path:
    return
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # A CPU program's cache entry holds its process's place in the job: one process loading another's
    # deadlocked the collectives (JAX 0.12.1, gloo). CPU jobs of several processes are tests; no cache.
    logging.info("compile_cache: off for a CPU job of several processes")
    return
  jax.config.update("jax_compilation_cache_dir", str(Path(path).expanduser()))
  # every program: a random init compiles one per initializer shape (about 60 at 0.2 s for the demo
  # model), and each stage that inits again would compile them all anew
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def mesh_from_config(cfg):
  return make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def model_from_config(cfg, mesh, checkpoint: str | Path | None = None, *, remat="none") -> Janus:
  """The configured Janus on the mesh: from `checkpoint` (default model.checkpoint) or a seeded init.
  remat: the decoder layers' policy in the training forward (a training stage passes its own)."""
  dtype, param_dtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  options = dict(remat=remat, attention_impl=cfg.model.attention)
  path = checkpoint or cfg.model.checkpoint
  if path:
    model = load_janus(path, mesh=mesh, dtype=dtype, param_dtype=param_dtype, **options)
  else:
    logging.warning("model.checkpoint is empty: using a randomly initialised %s (seed %d)", cfg.model.preset,
                    cfg.seed)
    model = place_on_mesh(Janus(preset(cfg.model.preset), nnx.Rngs(cfg.seed), dtype=dtype,
                                param_dtype=param_dtype, **options), mesh)
  if checkpoint is None:  # a training result already holds the tokenizer it was trained with
    load_trained_tokenizer(cfg, model)
  return model


def tokenizer_dir(cfg) -> Path:
  """Where the vq stage leaves the image tokenizer it trained (its parameters, orbax)."""
  return Path(cfg.workdir) / "vq" / "final"


def load_trained_tokenizer(cfg, model: Janus) -> bool:
  """Replaces model.vqmodel's parameters by the vq stage's (<workdir>/vq/final) when that stage has run."""
  final = tokenizer_dir(cfg)
  if not final.exists():
    return False
  params = nnx.state(model.vqmodel, nnx.Param)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        nnx.to_pure_dict(params))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore((final / "params").resolve(), target)
  nnx.replace_by_pure_dict(params, restored)
  nnx.update(model.vqmodel, params)
  logging.info("the image tokenizer is the vq stage's: %s", final)
  return True


def trained_checkpoint(cfg, stages=("grpo", "sft")) -> Path | None:
  """The newest finished training result, <workdir>/<stage>/final for the first of `stages` that has one."""
  for stage in stages:
    final = Path(cfg.workdir) / stage / "final"
    if final.exists():
      return final
  return None

def model_config(model) -> JanusConfig:
  """The Janus architecture the model stages will load (a ModelSection): model.checkpoint's, else the
  preset's. Read from the checkpoint's config file alone, before any weights."""
  ckpt = model.checkpoint
  if not ckpt:
    return preset(model.preset)
  if is_pgen_checkpoint(ckpt):
    return JanusConfig.from_dict(json.loads((Path(ckpt) / CONFIG_FILE).read_text())["model"])
  path = Path(ckpt) / "config.json"
  if not path.is_file():
    raise ConfigError(f"model.checkpoint: {path} not found; is {ckpt} a Janus checkpoint directory?")
  try:
    return JanusConfig.from_hf(json.loads(path.read_text()))
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"model.checkpoint: {path} is not a Janus config ({e})") from None
