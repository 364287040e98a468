"""Multi-host start-up: jax.distributed from the environment, before any other JAX call.

Explicit: JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES, JAX_PROCESS_ID (what
launch/slurm_gpu.sh and the tests set). PGEN_DISTRIBUTED=auto (set by launch/tpu_vm.sh) hands over to
JAX's own cluster detection (TPU VM pods, SLURM), as does a SLURM job of several tasks. A single
process needs nothing.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging


def _is_cluster() -> bool:
  if os.environ.get("PGEN_DISTRIBUTED") == "auto":
    return True
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize() -> None:
  """Joins this process to its job. Safe to call once per process; a no-op on one host."""
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    try:
      n, i = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ValueError("JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be "
                       f"integers too ({e})") from e
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU needs explicit collectives
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=i)
  elif _is_cluster():
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d; %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def gather_rows(batch: dict) -> dict:
  """Every process's rows of a host batch ({name: array}, process-local rows, the same names and
  per-process row counts everywhere), concatenated in process order: the global batch, the same on
  every process. Text (object) arrays too. The batch itself on one process."""
  if jax.process_count() == 1:
    return batch
  from jax.experimental import multihost_utils  # lazy: one process never needs it
  out = {}
  for k, v in sorted(batch.items()):  # the same order on every process: each key is a collective
    v = np.asarray(v)
    if v.dtype.kind in "OU":  # text: as padded utf-8 bytes of its JSON
      data = np.frombuffer(json.dumps(v.tolist()).encode(), np.uint8)
      size = int(multihost_utils.process_allgather(np.int64(data.size)).max())
      parts = multihost_utils.process_allgather(np.pad(data, (0, size - data.size), constant_values=ord(" ")))
      rows = [json.loads(bytes(p).decode()) for p in parts]
      out[k] = np.concatenate([np.array(r, dtype=v.dtype if v.dtype.kind == "O" else None).reshape(-1, *v.shape[1:])
                               for r in rows])
    else:
      out[k] = np.asarray(multihost_utils.process_allgather(v, tiled=True))
  return out


def local_rows(x: np.ndarray) -> np.ndarray:
  """This process's rows of a global host array that gather_rows built (equal parts, in process order)."""
  n = x.shape[0] // jax.process_count()
  return x[jax.process_index() * n:(jax.process_index() + 1) * n]


def first_then_others(fn, name: str):
  """fn() on process 0, then on the others: on a shared disk they find its result there (a store, a
  synthetic world) instead of racing to write it; on disks of their own each writes its own."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils  # lazy: one process never needs it
  first = jax.process_index() == 0
  if not first:
    multihost_utils.sync_global_devices(f"{name}: process 0 done")
  out = fn()
  if first:
    multihost_utils.sync_global_devices(f"{name}: process 0 done")
  return out

