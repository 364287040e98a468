#!/usr/bin/env bash
# The accelerator benchmarks in one run (at most about 15 minutes on one H200; each part has a limit), random weights at the
# Janus-Pro-1B shape, nothing downloaded, then one summary table:
#   attention    each kernel (xla, blockwise, cudnn) against fp32 xla, then fwd+bwd time at 3.5k tokens
#   generation   our sampler vs transformers' generate, 16 prompts x 4 samples, bf16; HBM roofline
#   history      5-history-image prompts (the GRPO rollout's layout): shared prefix vs unshared, 2 x 8
#   SFT          train-step time, tokens/s and MFU, batch 16 x (5 history images + target), bf16, remat
#   rewards      CLIP ViT-H-14 + DINOv2-L reward terms on 64 generated 384px images
#   GRPO split   the step's jitted functions (sampler, old log-probs, reward terms, update) at
#                configs/movielens.py's shape, timed on random inputs: no dataset needed
#   GRPO         the whole step (rollout, reward, update), configs/bench_grpo_1b.py, 6 steps
#                (needs tensorflow for the prepare stage; skipped, saying so, where it does not import)
#
#   bash pgen_jax/bench/accelerator.sh [OUTDIR]        # from the repository root; default /tmp/pgen_accel
# Each part has its own time limit, so one that fails or hangs costs only its share.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/pgen_accel}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
run() {  # name, limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - t0)) s; log $out/$name.log"
  tail -n 3 "$out/$name.log"
}
run attention 60 $py -m pgen_jax.bench.attention
# transformers' torch model shares the card: JAX takes 55% of it, not its default 75%.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.55 run generate 150 $py -m pgen_jax.bench.generate --preset=janus-pro-1b \
  --dtype=bfloat16 --prompts=16 --samples=4 --repeats=2 --json="$out/generate.jsonl"
run sft 100 $py -m pgen_jax.bench.sft --preset=janus-pro-1b --batch=16 --history=5 --dtype=bfloat16 --remat --steps=3
run rewards 120 $py -m pgen_jax.bench.rewards --images=64 --size=384 --repeats=3
run history 180 $py -m pgen_jax.bench.generate --preset=janus-pro-1b --dtype=bfloat16 --history=5 --prompts=2 \
  --samples=8 --repeats=2 --json="$out/history.jsonl"
run grpo_split 300 $py -m pgen_jax.bench.memory --config=configs/movielens.py --stage=grpo --preset=janus-pro-1b \
  --time=3
if $py -c "import tensorflow, tensorflow_datasets" 2>/dev/null; then
  run grpo 150 $py -m pgen_jax.main --config=configs/bench_grpo_1b.py --config.workdir="$out/grpo_run" \
    --config.grpo.num_steps=6
else
  echo "== grpo skipped: tensorflow / tensorflow_datasets do not import here (the prepare stage needs them)"
fi
$py - "$out" <<'PY'
import json, re, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
text = lambda name: (out / f"{name}.log").read_text(errors="replace") if (out / f"{name}.log").exists() else ""
for line in text("attention").splitlines():
  f = line.split()
  if len(f) == 9 and f[0] in ("xla", "blockwise", "cudnn"):
    rows.append(("attention", f[0], f"{f[7]} ms fwd+bwd", f"{f[8]} TFLOP/s",
                 f"rel. error out {f[1]} / {f[4]}, grad {f[3]} / {f[6]}"))
for name, against, goal in (("generate", "transformers", "goal 5x"), ("history", "unshared", "goal 3x")):
  gen = out / f"{name}.jsonl"
  for r in map(json.loads, gen.read_text().splitlines()) if gen.exists() else ():
    rows.append((f"generation ({name})", f"{r['prompts']}x{r['samples']}", f"{r['ours_images_per_s']:.2f} img/s",
                 f"{r.get('ratio', float('nan')):.2f}x {against} ({goal})",
                 f"{r.get('roofline', float('nan')):.0%} of HBM roofline (goal 50%)"))
m = re.search(r"(\d+) ms/step, ([\d,]+) tokens/s, ([\d.]+) model TFLOP/s, MFU (\S+)", text("sft"))
if m:
  rows.append(("SFT", "batch 16", f"{m.group(1)} ms/step", f"{m.group(2)} tokens/s", f"MFU {m.group(4)} (goal 45%)"))
m = re.findall(r"([\d.]+) ms", text("rewards"))
if m:
  rows.append(("rewards", "64 images", f"{m[-1]} ms/call", "", ""))
fns = {r["function"]: r["run_s"] for r in map(json.loads, re.findall(r"^\{.*\}$", text("grpo_split"), re.M))
       if "run_s" in r}
if fns:
  step = sum(fns.values())
  rows.append(("GRPO split", "8x8, 1B, movielens", f"{step:.2f} s/step (sum)",
               " ".join(f"{k} {v:.2f}s" for k, v in fns.items()),
               f"rewards {fns.get('reward_terms', 0) / step:.0%} of the step (goal <= 10%)"))
split = {}
for key in ("rollout", "reward", "update", "step"):
  vals = [float(v) for v in re.findall(rf"time/{key}\W+([\d.]+)", text("grpo"))]
  if len(vals) > 2:
    split[key] = statistics.median(vals[2:])  # the first steps compile
if split:
  share = split.get("reward", 0) / split["step"] if split.get("step") else float("nan")
  rows.append(("GRPO step", "8x8, 1B", f"{split.get('step', 0):.2f} s/step",
               " ".join(f"{k} {v:.2f}s" for k, v in split.items() if k != "step"),
               f"rewards {share:.0%} of the step (goal <= 10%)"))
print("\n| part | shape | speed | detail | against the goal |\n|---|---|---|---|---|")
for r in rows:
  print("| " + " | ".join(r) + " |")
if not rows:
  print("| (nothing measured: see the logs) | | | | |")
PY
