"""Random inputs of given abstract shapes, made on the devices in their shardings, and timing on them.

Used by `bench.memory --time`; flag-free, so that tests can import it next to the benchmarks' flags.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def random_maker(args):
  """seed -> arrays of the abstract args' shapes, dtypes and shardings, made on the devices in one jitted call:
  floats about U(-0.02, 0.02), integers in [1, 64) (valid token ids and codes; masks all on), raw keys
  random. A sine hash of the index, not jax.random: its many per-shape generators compile slowly on CPU."""
  leaves, treedef = jax.tree.flatten(args)

  def make(seed):
    out = []
    for i, x in enumerate(leaves):
      n = jax.lax.iota(jnp.float32, max(1, int(np.prod(x.shape)))).reshape(x.shape)
      u = jnp.mod(jnp.sin(n * 12.9898 + (i + 1) * 78.233 + seed) * 43758.5453, 1.0)  # in [0, 1)
      if jnp.issubdtype(x.dtype, jnp.floating):
        out.append((0.04 * u - 0.02).astype(x.dtype))
      elif x.dtype == jnp.bool_:
        out.append(jnp.ones(x.shape, bool))
      elif x.dtype == jnp.uint32:  # raw PRNG key data
        out.append((u * 2.0 ** 32).astype(jnp.uint32))
      else:
        out.append((1 + u * 63).astype(x.dtype))
    return out

  shardings = [getattr(x, "sharding", None) for x in leaves]
  made = jax.jit(make, out_shardings=shardings)  # compiled once, whatever the seed
  return lambda seed: jax.tree.unflatten(treedef, made(jnp.float32(seed)))


def random_like(args, seed: int):
  """One draw of `random_maker(args)`."""
  return random_maker(args)(seed)


def run_time(compiled, args, repeats: int) -> float:
  """Median seconds of a call on fresh random inputs (donated buffers are consumed), after a warm-up."""
  times, make = [], random_maker(args)
  for r in range(repeats + 1):
    inputs = jax.block_until_ready(make(r))
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(*inputs))
    if r:
      times.append(time.perf_counter() - t)
    del inputs, out
  return round(sorted(times)[len(times) // 2], 4)
