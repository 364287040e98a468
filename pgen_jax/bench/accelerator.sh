#!/usr/bin/env bash
# The whole job and the accelerator benchmarks on one GPU (an H100 80 GB or an H200) in two runs of at
# most 8 minutes each, start-up included: every part has its own time limit (a hang costs only its
# share) and the limits of a run add up to 450 s (30 s are left for installing the wheels and the
# summary). Each run prints one summary table and writes one JSON file, OUTDIR/run1.json or
# OUTDIR/run2.json (pgen_jax/bench/accel.py), beside OUTDIR/runN.log (every part's output). Random
# weights, nothing downloaded on the card.
#   run1  the job, `python -m pgen_jax.main --config=configs/accel_run1.py`: sft -> grpo -> eval ->
#         export at the Janus-Pro-1B shape with configs/movielens.py's shape (5 history images, G = 8,
#         8 prompts, SFT batch 64 as 4 x 16, remat full), a few steps each, one process per stage:
#         each stage's time and peak device memory, and the GRPO step's split (rollout, reward, update)
#   run2  generation against transformers at 16 prompts x 4 samples (bench.generate); the GRPO step
#         split into sampler / old log-probs / reward terms / update (bench.memory --stage=grpo
#         --time=1), its XLA memory figures compiled on the card beside those compiled on CPU by
#         --prepare; SFT at batch 16 and 64 (4 x 16) x remat full and dots_saveable (bench.sft,
#         pretokenized); history prompts, shared prefix vs unshared, 2 x 8 (bench.generate --history=5)
#
#   bash pgen_jax/bench/accelerator.sh --prepare [PREP]       # before, on a CPU machine with PyPI (~10 min):
#        PREP (default .accel, git-ignored): whl/ (what the card's image lacks: transformers 5.24 for
#        Janus generate, grain, clu, tensorflow-datasets, ...), world/ + store/ (the 384px synthetic
#        store, prepared with TensorFlow, which the card lacks), memory_cpu.jsonl; 34 MiB
#   bash pgen_jax/bench/accelerator.sh run1 OUTDIR [PREP]     # on the card (PREP carried along)
#   bash pgen_jax/bench/accelerator.sh run2 OUTDIR [PREP]     # ACCEL_PARTS="sft history": only those
#   bash pgen_jax/bench/accelerator.sh --dry-run [OUTDIR]     # both runs at a tiny preset on CPU, TensorFlow
#        hidden as on the card, limits x3 (default OUTDIR /tmp/pgen_accel_dry; tests/test_accelerator.py)
#   ACCEL_PRESET=tiny PYTHON=... bash pgen_jax/bench/accelerator.sh run1 OUTDIR PREP  # the card's path on CPU
#
# From a session with the device tool (docs/benchmarks.md, "Accelerator runs (how to)"): two calls,
#   run(command="bash pgen_jax/bench/accelerator.sh run1 $OUT", carry=[".accel"], timeout_s=480)
#   run(command="bash pgen_jax/bench/accelerator.sh run2 $OUT", carry=[".accel"], timeout_s=480)
# The job's files go to ACCEL_WORK (default /tmp/pgen_accel_work), not OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
mode=${1:-}

# The card's image lacks these (docs/benchmarks.md); versions as this project's CPU machines have them.
WHEELS=(transformers==5.24.0 ml_collections==1.1.0 clu==0.0.12 grain==0.2.18 array_record==0.8.6
        tensorflow-datasets==4.9.10 dm_pix==0.4.5 dm-tree==0.1.10 simple-parsing==0.1.9 docstring-parser==0.18.0
        immutabledict==4.3.1 toml==0.10.2 termcolor==3.3.0 importlib_resources==7.1.0 portpicker==1.6.0
        tensorflow-metadata==1.21.0)
SDISTS=(promise==2.3)  # tensorflow-datasets imports it; PyPI has no wheel: built here (pure Python)

prepare() {  # PREP WHEELS(yes|no): the wheels, the world and its store, bench.memory on CPU (at $preset)
  local prep=$1 wheels=$2 config=configs/accel_run1.py
  [ "$preset" = tiny ] && config=configs/accel_run1.py:tiny
  mkdir -p "$prep" || return 1
  if [ "$wheels" = yes ]; then
    local plat=()
    for n in 28 27 24 17; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
    echo "== wheels for the card (Python 3.12, x86-64) -> $prep/whl"
    { $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$prep/whl" "${WHEELS[@]}" \
      && $py -m pip wheel -q --no-deps -w "$prep/whl" "${SDISTS[@]}"; } 2>&1 | grep -v "is ignored"
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
  fi
  echo "== the world and its prepared store -> $prep/world, $prep/store"
  $py -m pgen_jax.bench.accel world "$prep" || return 1
  $py -m pgen_jax.main --config="$config" "--config.stages=('prepare',)" --config.data.root="$prep/world" \
    --config.data.store="$prep/store" --config.workdir="$prep/prepare_run" > "$prep/prepare.log" 2>&1 \
    || { tail -n 5 "$prep/prepare.log"; return 1; }
  rm -rf "$prep/prepare_run" "$prep/store/downloads"
  echo "== bench.memory on CPU (the figures run 2 compiles on the card) -> $prep/memory_cpu.jsonl"
  rm -f "$prep/memory_cpu.jsonl"
  JAX_PLATFORMS=cpu XLA_FLAGS= $py -m pgen_jax.bench.memory --config="$config" --stage=grpo \
    > "$prep/memory_cpu.jsonl" 2> "$prep/memory_cpu.log" || { tail -n 5 "$prep/memory_cpu.log"; return 1; }
  local mib=$(( $(du -sk "$prep" | cut -f1) / 1024 ))
  echo "== $prep: ${mib} MiB (what travels with the checkout: 64 MiB at most, the tracked files included)"
  [ "$mib" -le 56 ] || { echo "$prep is too large to carry"; return 1; }
}

setup() {  # PREP: on the card, install the carried wheels where the image lacks them
  local prep=$1
  if [ -d "$prep/whl" ] && ! $py - <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util as u, sys
need = ("grain", "clu", "ml_collections", "tensorflow_datasets", "dm_pix", "array_record", "promise")
v = tuple(int(x) for x in md.version("transformers").split(".")[:2])
sys.exit(0 if all(u.find_spec(m) for m in need) and v >= (5, 24) else 1)
PY
  then
    echo "== installing the carried wheels ($prep/whl) into /tmp/pgen_site"
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pgen_site \
      "$prep"/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/pgen_site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the checkout itself, not installed
}

info() {  # the run's machine and start, for the summary (WORK/info.json)
  local device
  device=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed -n 1p)
  [ -n "$device" ] || device="cpu: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  printf '{"device": "%s", "preset": "%s", "started": "%s", "python": "%s"}\n' "$device" "$preset" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$($py -c 'import sys; print(sys.version.split()[0])')" > "$work/info.json"
  echo "== $run on $device; preset $preset; work $work; disk free $(df -h "$work" | awk 'NR==2 {print $4}')"
}

part() {  # NAME LIMIT_S COMMAND...: one part under its own limit; its output goes to WORK/NAME.log
  local name=$1 limit=$(( $2 * ${ACCEL_LIMIT_SCALE:-1} )); shift 2
  if [ -n "${ACCEL_PARTS:-}" ] && [[ " $ACCEL_PARTS " != *" $name "* ]]; then return 0; fi
  echo "== $name (limit ${limit} s): $*" | tee -a "$out/$run.log"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$work/$name.log" 2>&1
  local rc=$?
  printf '{"part": "%s", "limit_s": %d, "exit": %d, "wall_s": %d}\n' "$name" "$limit" "$rc" $((SECONDS - t0)) \
    >> "$work/parts.jsonl"
  cat "$work/$name.log" >> "$out/$run.log"
  echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$out/$run.log"
  tail -n 2 "$work/$name.log" | cut -c1-300
  return $rc
}

run1() {  # the job, one process per stage (its own limit, its own peak device memory)
  local config=configs/accel_run1.py job=$work/job
  [ "$preset" = tiny ] && config=configs/accel_run1.py:tiny
  # Its checkpoints take up to about 34 GB at the 1B shape (docs/benchmarks.md): where the disk has less
  # free, memory (/dev/shm) may.
  local free shm
  free=$(df -B1G --output=avail "$work" | tail -n 1) shm=$(df -B1G --output=avail /dev/shm 2>/dev/null | tail -n 1)
  if [ "$preset" != tiny ] && [ "$free" -lt 40 ] && [ "${shm:-0}" -ge 40 ]; then
    job=/dev/shm/pgen_accel_job && rm -rf "$job"
    echo "== ${free} GB free under $work: the job writes to $job"
  fi
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}  # SFT: 65.9 GB by XLA's estimate
  local args=(--config="$config" --config.workdir="$job" --config.export.dir="$job/hf" --config.data.root="$prep/world"
              --config.data.store="$prep/store")
  local limits=(sft:125 grpo:175 eval:105 export:45)
  for sl in "${limits[@]}"; do
    local stage=${sl%%:*}
    part "$stage" "${sl##*:}" $pyrun pgen_jax.main "${args[@]}" "--config.stages=('$stage',)" || break
    # later stages read only <stage>/final: the training checkpoints would fill the card's 64 GiB disk
    rm -rf "$job/$stage/latest" "$job/$stage/best"
  done
}

run2() {
  local memory_fraction=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
  local gen=(--preset=janus-pro-1b --dtype=bfloat16 --prompts=16 --samples=4)
  local hist=(--preset=janus-pro-1b --dtype=bfloat16 --history=5 --prompts=2 --samples=8 --nodecode)
  local sft=(--preset=janus-pro-1b --dtype=bfloat16 --batch=16,64 --micro_batch=16 --history=5 --steps=1)
  local config=configs/accel_run1.py
  if [ "$preset" = tiny ]; then
    gen=(--preset=tiny --prompts=2 --samples=2 --prompt_len=16)
    hist=(--preset=tiny --history=5 --prompts=1 --samples=2 --nodecode)
    sft=(--preset=tiny --batch=4,8 --micro_batch=4 --history=5 --text=8 --steps=1)
    config=configs/accel_run1.py:tiny
  fi
  local hf=(); $py -c "import torch" 2>/dev/null || hf=(--nohf)  # transformers' generate needs torch
  # transformers' torch model shares the card: JAX takes 55% of it, not its default 75%
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.55 part generate 95 $pyrun pgen_jax.bench.generate "${gen[@]}" "${hf[@]}" \
    --repeats=1 --json="$work/generate.jsonl"
  # bench.memory through accel.py: each function's row is printed once measured, so a cut part keeps them
  XLA_PYTHON_CLIENT_MEM_FRACTION=$memory_fraction part grpo_split 145 $pyrun pgen_jax.bench.accel memory \
    --config="$config" --stage=grpo --time=1
  XLA_PYTHON_CLIENT_MEM_FRACTION=$memory_fraction part sft 135 $pyrun pgen_jax.bench.sft "${sft[@]}" --remat \
    --remat_policy=full,dots_saveable --json="$work/sft.jsonl"
  XLA_PYTHON_CLIENT_MEM_FRACTION=$memory_fraction part history 75 $pyrun pgen_jax.bench.generate "${hist[@]}" \
    --repeats=1 --json="$work/history.jsonl"
}

one_run() {  # run1|run2 OUTDIR PREP
  run=$1 out=$2 prep=${3:-.accel}
  work=${ACCEL_WORK:-/tmp/pgen_accel_work}/$run
  [ -d "$prep/store" ] || { echo "$prep/store: missing; run 'bash $0 --prepare $prep' first, on CPU"; exit 4; }
  $py -m pgen_jax.bench.accel mtimes "$prep" || exit 4  # the store's key: the world's files as prepared
  rm -rf "$work" && mkdir -p "$work" "$out" && rm -f "$out/$run.log" "$out/$run.json"
  info
  "$run"
  $py -m pgen_jax.bench.accel summary "$run" "$work" "$out" --cpu_memory="$prep/memory_cpu.jsonl"
}

preset=${ACCEL_PRESET:-janus-pro-1b}  # tiny: the card's path at the dry run's preset (a CPU check of the wheels)
pyrun="$py -m"
# Every part keeps its compiled programs where the job keeps them (its compile_cache): a part run again
# on the same machine, or a stage compiling a program another one compiled, loads it.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/pgen_jax/xla}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}
relative() { realpath -m --relative-to=. "$1"; }  # the store's key holds data.root as spelled
case "$mode" in
  --prepare)
    prepare "$(relative "${2:-.accel}")" yes ;;
  run1|run2)
    [ -n "${2:-}" ] || { echo "usage: bash $0 $mode OUTDIR [PREP]"; exit 2; }
    setup "$(relative "${3:-.accel}")"
    one_run "$mode" "$2" "$(relative "${3:-.accel}")" ;;
  --dry-run)
    # Both runs at the tiny preset on this machine's CPU, TensorFlow hidden from every part as on the
    # card (the prepare stage, before, has it); the same parts, limits and summaries.
    dry=${2:-/tmp/pgen_accel_dry}
    preset=tiny
    pyrun="$py -m pgen_jax.bench.no_tensorflow"
    export JAX_PLATFORMS=cpu XLA_FLAGS=
    export ACCEL_WORK=$dry/work
    # the card's limits are for the card: a busy 2-core CPU compiling from cold needs more
    export ACCEL_LIMIT_SCALE=${ACCEL_LIMIT_SCALE:-3}
    t0=$SECONDS
    rm -rf "$dry" && mkdir -p "$dry"
    prepare "$dry/prep" no || exit 1
    # The two runs are independent: side by side here (each part mostly on one core), one after the other
    # on the card.
    (one_run run1 "$dry" "$dry/prep" > "$dry/run1.out" 2>&1) & p1=$!
    (one_run run2 "$dry" "$dry/prep" > "$dry/run2.out" 2>&1) & p2=$!
    wait $p1; rc1=$?; wait $p2; rc2=$?
    cat "$dry/run1.out" "$dry/run2.out"
    echo "== dry run: $((SECONDS - t0)) s; load average $(cut -d' ' -f1-3 /proc/loadavg); $dry/run{1,2}.json"
    [ $rc1 = 0 ] && [ $rc2 = 0 ] ;;
  *)
    sed -n '2,30p' "$0"; exit 2 ;;
esac
