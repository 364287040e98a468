"""Two processes on 127.0.0.1 join through jax.distributed (CPU collectives) and agree with one."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from hf_janus import SIZES, hf_model
from pgen_jax.models import load_janus, make_mesh
from pgen_jax.sampling import PromptBatch, Sampler, SamplingConfig, SpecialTokens, uncond_ids

WORKER = Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
  hf_model(seed=31, **SIZES["gqa"]).save_pretrained(tmp_path / "ckpt")
  rng = np.random.default_rng(0)
  ids = np.concatenate([np.ones((4, 1), np.int32), rng.integers(3, 300, (4, 6)).astype(np.int32),
                        np.full((4, 1), 317, np.int32)], axis=1)
  mask = np.ones_like(ids)
  uncond = uncond_ids(ids, mask, SpecialTokens(bos=1, pad=0, boi=317, eoi=316, image=319))
  images = np.zeros((0, 16, 16, 3), np.float32)
  np.savez(tmp_path / "in.npz", ids=ids, uncond=uncond, images=images)

  port = free_port()
  procs = []
  for i in range(2):
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)}
    procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "ckpt"), str(tmp_path / "in.npz"),
                                   str(tmp_path / "out.npz")], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
  got = np.load(tmp_path / "out.npz")

  model = load_janus(tmp_path / "ckpt", mesh=make_mesh(devices=jax.devices()[:1]))
  np.testing.assert_allclose(got["logits"], np.asarray(model(ids).logits), atol=1e-5, rtol=0)
  batch = PromptBatch(ids=ids, mask=mask, uncond=uncond, images=images, uncond_has_images=False)
  ref = Sampler(model, make_mesh(devices=jax.devices()[:1]),
                SamplingConfig(temperature=1.0, num_samples=2, num_tokens=5, decode_images=False))(
                    batch, jax.random.key(5))
  np.testing.assert_array_equal(got["tokens"], np.asarray(ref.tokens))
  np.testing.assert_allclose(got["logprobs"], np.asarray(ref.logprobs), atol=1e-5)
