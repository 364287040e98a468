"""Janus-Pro in Flax NNX: config, model, checkpoints and sharding."""

from pgen_jax.models.checkpoint import abstract_janus, count_params, load_janus, save_janus
from pgen_jax.models.config import JanusConfig, janus_pro_1b, janus_pro_7b, preset, tiny
from pgen_jax.models.janus import Janus, JanusOutput, from_uint8, to_uint8
from pgen_jax.models.sharding import make_mesh, param_shardings, place_on_mesh

__all__ = ["Janus", "JanusConfig", "JanusOutput", "abstract_janus", "count_params", "from_uint8", "janus_pro_1b",
           "janus_pro_7b", "load_janus", "make_mesh", "param_shardings", "place_on_mesh", "preset", "save_janus", "tiny",
           "to_uint8"]
