"""The launch scripts pass the right environment and command (cluster tools stubbed on PATH)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stub(bin_dir: Path, name: str, body: str):
  p = bin_dir / name
  p.write_text("#!/usr/bin/env bash\n" + body)
  p.chmod(0o755)


def slurm(tmp_path, hostnames: str, ntasks: int, *args: str) -> subprocess.CompletedProcess:
  """launch/slurm_gpu.sh with scontrol printing `hostnames`, and srun running the task command as SLURM would
  on each node, for the first two ranks only (enough to see the ranks differ), with a python that echoes what
  it was given."""
  stub(tmp_path, "scontrol", hostnames)
  stub(tmp_path, "srun", f'shift\nfor r in $(seq 0 {min(ntasks, 2) - 1}); do SLURM_PROCID=$r "$@"; done\n')
  stub(tmp_path, "python", 'echo "rank=$JAX_PROCESS_ID of=$JAX_NUM_PROCESSES at=$JAX_COORDINATOR_ADDRESS args=$*"\n')
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[...]",
         "SLURM_NTASKS": str(ntasks)}
  return subprocess.run(["bash", "launch/slurm_gpu.sh", "configs/movielens.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True)


def test_slurm_script_sets_coordinator_and_ranks(tmp_path):
  run = slurm(tmp_path, "echo node-a; echo node-b\n", 2, "--config.seed=3")
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == [
      f"rank={r} of=2 at=node-a:12355 args=-m pgen_jax.main --config=configs/movielens.py --config.seed=3"
      for r in (0, 1)]


def test_slurm_coordinator_is_the_first_of_a_long_node_list(tmp_path):
  # More hostnames than a pipe holds: a reader that stops after the first line would fail scontrol with SIGPIPE.
  run = slurm(tmp_path, 'seq -f "node-%05g" 1 40000\n', 40000)
  assert run.returncode == 0, run.stderr
  assert [line.split()[2] for line in run.stdout.splitlines()] == ["at=node-00001:12355"] * 2


def test_tpu_script_runs_main_on_all_workers(tmp_path):
  stub(tmp_path, "gcloud", 'printf "%s\\n" "$@"\n')
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
  run = subprocess.run(["bash", "launch/tpu_vm.sh", "my-tpu", "us-east5-a", "configs/movielens.py",
                        "--config.workdir=gs://b/run 1"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  args = run.stdout.splitlines()
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in args
  cmd = args[-1]
  assert "PGEN_DISTRIBUTED=auto python -m pgen_jax.main --config=configs/movielens.py" in cmd
  assert r"--config.workdir=gs://b/run\ 1" in cmd
  assert subprocess.run(["bash", "launch/tpu_vm.sh"], cwd=ROOT, capture_output=True).returncode == 2
