#!/usr/bin/env bash
# Runs a pgen_jax job on every worker of a Cloud TPU VM slice (one process per host).
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/movielens.py [--config.key=value ...]
#   PGEN_SETUP=1 launch/tpu_vm.sh ...     # first clone/install on all workers
#
# The repository must be at $PGEN_REPO (default ~/pgen_jax) on each worker. Workers join through
# jax.distributed's TPU cluster detection (PGEN_DISTRIBUTED=auto).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [flags...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3
shift 3
repo=${PGEN_REPO:-'~/pgen_jax'}
flags=$(printf ' %q' "$@")
cmd="cd $repo && PGEN_DISTRIBUTED=auto python -m pgen_jax.main --config=$config$flags"
if [ "${PGEN_SETUP:-0}" = 1 ]; then
  cmd="cd $repo && pip install -e '.[tpu]' && $cmd"
fi
exec gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$cmd"
