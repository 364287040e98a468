"""One process of the two-process test in test_multihost.py (not a test module itself).

usage: multihost_worker.py CHECKPOINT INPUTS.npz OUTPUT.npz; JAX_COORDINATOR_ADDRESS etc. in env.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

from pgen_jax import distributed  # noqa: E402

distributed.initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from pgen_jax.models import load_janus, make_mesh, param_shardings  # noqa: E402
from pgen_jax.models.sharding import BATCH  # noqa: E402
from pgen_jax.sampling import PromptBatch, Sampler, SamplingConfig  # noqa: E402


def main(ckpt, inputs, output):
  assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
  data = np.load(inputs)
  mesh = make_mesh(data=1, fsdp=2, tensor=2)
  model = load_janus(ckpt, mesh=mesh)
  graphdef, state = nnx.split(model)
  ids = data["ids"]
  batch_sharding = NamedSharding(mesh, P(BATCH))
  global_ids = jax.make_array_from_callback(ids.shape, batch_sharding, lambda idx: ids[idx])
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).logits,
                    in_shardings=(param_shardings(state, mesh), batch_sharding),
                    out_shardings=NamedSharding(mesh, P()))
  logits = np.asarray(forward(state, global_ids))
  batch = PromptBatch(ids=ids, mask=np.ones_like(ids), uncond=data["uncond"], images=data["images"],
                      uncond_has_images=False)
  out = Sampler(model, mesh, SamplingConfig(temperature=1.0, num_samples=2, num_tokens=5, decode_images=False))(
      batch, jax.random.key(5))
  if jax.process_index() == 0:
    np.savez(output, logits=logits, tokens=np.asarray(out.tokens), logprobs=np.asarray(out.logprobs))


if __name__ == "__main__":
  main(*sys.argv[1:])
