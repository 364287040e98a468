"""What every stage builds from the config: the mesh, the model, the newest training result."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from absl import logging
from flax import nnx

from pgen_jax.models import Janus, load_janus, make_mesh, place_on_mesh, preset


def mesh_from_config(cfg):
  return make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def model_from_config(cfg, mesh, checkpoint: str | Path | None = None) -> Janus:
  """The configured Janus on the mesh: from `checkpoint` (default model.checkpoint) or a seeded init."""
  dtype, param_dtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  path = checkpoint or cfg.model.checkpoint
  if path:
    model = load_janus(path, mesh=mesh, dtype=dtype, param_dtype=param_dtype)
  else:
    logging.warning("model.checkpoint is empty: using a randomly initialised %s (seed %d)", cfg.model.preset,
                    cfg.seed)
    model = place_on_mesh(Janus(preset(cfg.model.preset), nnx.Rngs(cfg.seed), dtype=dtype,
                                param_dtype=param_dtype), mesh)
  model.language_model.attention_impl = cfg.model.attention
  return model


def trained_checkpoint(cfg, stages=("grpo", "sft")) -> Path | None:
  """The newest finished training result, <workdir>/<stage>/final for the first of `stages` that has one."""
  for stage in stages:
    final = Path(cfg.workdir) / stage / "final"
    if final.exists():
      return final
  return None
