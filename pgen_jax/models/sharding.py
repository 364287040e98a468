"""Device mesh and partition rules for Janus parameters.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters sharded) and `tensor`
(Megatron-style model parallel). A rule names, per tensor dimension, the mesh axis it may be split
over; a dimension not divisible by that axis' size stays whole, so every rule works on any mesh.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

# (regex over the '/'-joined param path, spec for the param's dims). First match wins.
# Linear kernels are (in, out); embeddings (vocab, dim).
RULES: list[tuple[str, tuple]] = [
    (r"language_model/embed_tokens/embedding", ("tensor", "fsdp")),
    (r"lm_head/kernel", ("fsdp", "tensor")),
    # LoRA adapters A (in, r) and B (r, out) split as their kernel's in and out (lora._follow_sharding)
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel_lora_a", ("fsdp", None)),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel_lora_b", (None, "tensor")),
    (r"(o_proj|down_proj)/kernel_lora_a", ("tensor", None)),
    (r"(o_proj|down_proj)/kernel_lora_b", (None, "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|fc1)/kernel", ("fsdp", "tensor")),
    (r"(o_proj|down_proj|projection_layer|fc2)/kernel", ("tensor", "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|fc1)/bias", ("tensor",)),
    (r"generation_head/vision_head/kernel", ("fsdp", "tensor")),
    (r"generation_head/proj_out/kernel", ("fsdp", "tensor")),
    (r"hidden_layers/\d+/kernel", ("fsdp", "tensor")),
    (r"vqmodel/.*kernel", (None, None, None, "fsdp")),  # conv HWIO: split output channels
    (r".*", ()),  # norms, biases, small tensors: replicated
]
# The decoder layers' parameters carry a leading layer axis: it stays whole (each scan step reads one
# layer), the rules above apply to the rest.
STACKED = r"language_model/layers/(?!\d)"


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 to take the rest."""
  devices = list(devices if devices is not None else jax.devices())
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into mesh {shape}")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} needs "
                     f"{int(np.prod(shape))} devices, have {len(devices)}")
  return jax.make_mesh(tuple(shape), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


BATCH = ("data", "fsdp")  # activations and KV caches split their batch over both data axes


def fit_spec(shape: tuple[int, ...], axes: tuple, mesh: Mesh) -> P:
  """PartitionSpec putting dim i on axes[i] (a name, a tuple of names or None) where it divides."""
  dims = []
  for i, dim in enumerate(shape):
    axis = axes[i] if i < len(axes) else None
    size = int(np.prod([mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,))])) if axis else 1
    dims.append(axis if axis and dim % size == 0 else None)
  return P(*dims)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  if re.search(STACKED, path):
    return P(None, *spec_for(re.sub(STACKED, "language_model/layer/", path), shape[1:], mesh))
  for pattern, axes in RULES:
    if re.search(pattern, path):
      return fit_spec(shape, axes, mesh)
  return P()


def path_str(path: tuple) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def place_on_mesh(module, mesh: Mesh):
  """An NNX module with its parameters moved to their shardings on `mesh` (spec_for's rules)."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, put_global(state, param_shardings(state, mesh)))


def put_global(tree, shardings):
  """jax.device_put of this process's arrays onto `shardings`, whose values are the same on every process.

  On several processes device arrays go through host memory: put straight onto a replicated sharding
  that spans processes, they came out broken with this JAX (addressable_shards raises "an argument
  array had 2 shard(s)", and orbax cannot save them); numpy input is put right."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def from_host(x: np.ndarray, sharding):
    # Each process builds its own shards from its copy: no collective (device_put of host data onto
    # a sharding across processes checks the copies are equal with an allgather, which hung on
    # JAX 0.12.1's CPU collectives).
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  def put(x, sharding):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(from_host(np.asarray(jax.random.key_data(x)), sharding),
                                      impl=jax.random.key_impl(x))
    return from_host(np.asarray(x), sharding)
  return jax.tree.map(put, tree, shardings)


def to_device(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local batch -> global arrays split over the mesh's batch axes."""
  def put(x):
    # The global batch's rows decide (every host puts as many): with one row per host on two hosts,
    # the global 2 split over 2 devices, where this host's 1 alone would have been taken as the whole
    # (replicated) batch, a different one on each host.
    rows = x.shape[0] * jax.process_count()
    spec = P(BATCH) if rows % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0 else P()
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.ascontiguousarray(x))
  return {k: put(v) for k, v in batch.items()}


def param_shardings(abstract_state, mesh: Mesh):
  """A pytree like `abstract_state` (of ShapeDtypeStructs or arrays) holding NamedShardings."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, spec_for(path_str(p), x.shape, mesh)), abstract_state)
