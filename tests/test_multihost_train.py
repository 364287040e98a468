"""The job itself across processes: `python -m pgen_jax.main` as two processes on 127.0.0.1 (jax.distributed,
gloo CPU collectives, one device each) runs a few SFT and GRPO steps of the demo world, each process
reading its own slice of every global batch, and writes the same sft/final and grpo/final parameters as
one process with two devices running the same config (the reference: the same mesh and global batch).
The two processes prepare their data themselves, on one disk, and use no compile cache (setup.py)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from pgen_jax.models import load_janus, make_mesh

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "sft", "grpo")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def args(workdir: Path, store: Path) -> list[str]:
  """A tiny demo run: 4 SFT steps of 4 windows, 3 GRPO steps of 2 histories x 2 samples (sampled
  ahead for step 2, as the demo does), the demo's pixel reward. No validation reward, grids only at the end."""
  return ["--config=configs/demo.py", f"--config.stages={STAGES!r}", f"--config.workdir={workdir}",
          f"--config.data.root={store}/world", f"--config.data.store={store}/data",
          "--config.sft.num_steps=4", "--config.sft.batch_size=4", "--config.sft.warmup_steps=1",
          "--config.sft.eval_every=100", "--config.sft.eval_batches=1", "--config.sft.eval_batch_size=2",
          "--config.sft.ckpt_every=2", "--config.sft.log_every=2", "--config.sft.grid_samples=1",
          "--config.grpo.num_steps=3", "--config.grpo.prompts_per_step=2", "--config.grpo.group_size=2",
          "--config.grpo.ckpt_every=2", "--config.grpo.eval_every=0", "--config.grpo.grid_every=100",
          "--config.grpo.log_every=1", "--config.grpo.lr=1e-3"]


def env(devices: int, **extra) -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def final_params(workdir: Path, stage: str) -> dict[str, np.ndarray]:
  """A final checkpoint's parameters as {path: array} (whatever tree the model has), on one device."""
  model = load_janus(workdir / stage / "final", mesh=make_mesh(devices=jax.devices()[:1]))
  tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_two_processes_train_as_one(tmp_path):
  store = tmp_path / "store"
  t0 = time.perf_counter()
  one = subprocess.run([sys.executable, "-m", "pgen_jax.main", *args(tmp_path / "one", store)], cwd=ROOT,
                       env=env(2), capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  t1 = time.perf_counter()

  port = free_port()
  logs = [open(tmp_path / f"process{i}.log", "w") for i in range(2)]
  # a store of their own: both processes prepare it (the same synthetic world) on one disk, in turn
  procs = [subprocess.Popen([sys.executable, "-m", "pgen_jax.main", *args(tmp_path / "two", tmp_path / "store2")],
                            cwd=ROOT,
                            env=env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                    JAX_PROCESS_ID=str(i)), stdout=subprocess.DEVNULL, stderr=log)
           for i, log in enumerate(logs)]
  try:
    for p in procs:
      p.wait(timeout=900)  # two processes compile everything each: about 3x one process on 2 loaded cores
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, p in enumerate(procs):
    logs[i].close()
    assert p.returncode == 0, f"process {i}:\n" + (tmp_path / f"process{i}.log").read_text()[-3000:]
  print(f"one process {t1 - t0:.0f} s, two {time.perf_counter() - t1:.0f} s")

  two_log = (tmp_path / "process1.log").read_text()
  assert "process 1 of 2; 1 local / 2 global devices" in two_log  # really two processes, one device each
  for stage in ("sft", "grpo"):
    want, got = final_params(tmp_path / "one", stage), final_params(tmp_path / "two", stage)
    assert got.keys() == want.keys() and want
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6, err_msg=f"{stage}/final {k}")
  # ... and training moved them: SFT's final differs from GRPO's (GRPO trained), as from the init.
  sft, grpo = final_params(tmp_path / "one", "sft"), final_params(tmp_path / "one", "grpo")
  assert max(np.abs(sft[k] - grpo[k]).max() for k in sft) > 1e-4
