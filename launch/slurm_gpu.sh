#!/usr/bin/env bash
#SBATCH --job-name=pgen_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
# A pgen_jax job over several GPU nodes: one process per node owning all its GPUs.
#
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/movielens.py [--config.key=value ...]
#
# Process 0's node is the jax.distributed coordinator (port $PGEN_PORT, default 12355).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: sbatch $0 CONFIG [flags...]" >&2
  exit 2
fi
# sed reads every line: `head -n 1` would close the pipe early, and scontrol's SIGPIPE fails the job under pipefail
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
export JAX_COORDINATOR_ADDRESS="$head:${PGEN_PORT:-12355}"
export JAX_NUM_PROCESSES="$SLURM_NTASKS"
# Each task learns its rank from SLURM_PROCID inside srun.
exec srun --kill-on-bad-exit=1 bash -c 'export JAX_PROCESS_ID=$SLURM_PROCID; exec python -m pgen_jax.main --config="$0" "$@"' "$@"
