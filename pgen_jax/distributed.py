"""Multi-host start-up: jax.distributed from the environment, before any other JAX call.

Explicit: JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES, JAX_PROCESS_ID (what
launch/slurm_gpu.sh and the tests set). PGEN_DISTRIBUTED=auto (set by launch/tpu_vm.sh) hands over to
JAX's own cluster detection (TPU VM pods, SLURM), as does a SLURM job of several tasks. A single
process needs nothing.
"""

from __future__ import annotations

import os

import jax
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
