"""The accelerator runs' helpers (pgen_jax/bench/accelerator.sh): the small synthetic world, and each
run's summary, one table and one JSON file from what its parts left.

  python -m pgen_jax.bench.accel world PREP              # PREP/world, configs/accel_run1.py's world
  python -m pgen_jax.bench.accel mtimes PREP             # its files' times back as prepared (after a copy)
  python -m pgen_jax.bench.accel memory ARGS...          # bench.memory, each row printed when measured
  python -m pgen_jax.bench.accel summary run1 WORK OUT   # WORK: the parts' logs; OUT/run1.json
  python -m pgen_jax.bench.accel summary run2 WORK OUT [--cpu_memory=FILE]

A part is one command with its own time limit; accelerator.sh records each in WORK/parts.jsonl
({"part", "limit_s", "exit", "wall_s"}). Figures a platform cannot give (peak device memory, MFU and
the HBM roofline on CPU) are null, with the reason in the table; every other figure is a finite number.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

STAGES = ("sft", "grpo", "eval", "export")              # run 1's parts, in order
RUN2 = ("generate", "grpo_split", "sft", "history")       # run 2's parts, in order
# The issue's goals on the card (issue 26): generation vs transformers and the HBM roofline at 16 x 4,
# SFT MFU, the rewards' share of a GRPO step.
GOALS = {"gen_ratio": 6.0, "gen_roofline": 0.55, "sft_mfu": 0.45, "reward_share": 0.10}
SPLIT = ("rollout", "reward", "update", "step")            # the GRPO loop's time/* scalars
WORLD = dict(movies_per_genre=3, users=16, ratings_per_user=18)  # see configs/accel_run1.py


def write_world(prep: str) -> None:
  """PREP/world, and PREP/world_mtimes.json: the prepared store is keyed by its raw files' names, sizes
  and modification times (pgen_jax.data.plan.DataSpec.fingerprint), which a copy to the card may not keep."""
  from pgen_jax.data import synthetic  # lazy: the summary needs no data code
  root = synthetic.write(Path(prep) / "world", synthetic.WorldConfig(**WORLD))
  times = {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}
  (Path(prep) / "world_mtimes.json").write_text(json.dumps(times, indent=0) + "\n")


def restore_mtimes(prep: str) -> int:
  """Gives PREP/world's files back the modification times they had when the store was prepared."""
  path, root = Path(prep) / "world_mtimes.json", Path(prep) / "world"
  times = json.loads(path.read_text()) if path.exists() else {}
  for name, ns in times.items():
    if (root / name).exists():
      os.utime(root / name, ns=(ns, ns))
  return len(times)


def run_memory(argv: list[str]) -> None:
  """pgen_jax.bench.memory with each function's row printed as soon as it is measured, so that a part
  cut at its time limit keeps the functions it finished (bench.memory prints them all at its end)."""
  from absl import app  # lazy: the summary needs neither
  from pgen_jax.bench import memory
  measure = memory.measure

  def printing(*args, **kw):
    row = measure(*args, **kw)
    print(json.dumps(row), flush=True)
    return row

  memory.measure = printing
  app.run(memory.main, argv=["pgen_jax.bench.memory", *argv])


# ---- reading the parts' outputs --------------------------------------------------------------------

def _parts(work: Path) -> dict[str, dict]:
  path = work / "parts.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
  return {r["part"]: r for r in rows}  # a part run again: its last run


def _status(part: dict | None) -> str:
  if part is None:
    return "not run"
  return {0: "ok", 124: "timed out", 137: "timed out"}.get(part["exit"], f"failed (exit {part['exit']})")


def _text(path: Path) -> str:
  return path.read_text(errors="replace") if path.exists() else ""


def _jsonl(path: Path) -> list[dict]:
  out = []
  for line in _text(path).splitlines():
    line = line.strip()
    if line.startswith("{") and line.endswith("}"):
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out


def _logged_scalars(log: str) -> dict[int, dict[str, float]]:
  """clu's LoggingWriter lines, `[step] key=value, ...`, by step."""
  steps: dict[int, dict[str, float]] = {}
  for m in re.finditer(r"\] \[(\d+)\] (.*)$", log, re.M):
    for key, value in re.findall(r"([\w/.-]+)=([-+\w.]+)", m.group(2)):
      try:
        steps.setdefault(int(m.group(1)), {})[key] = float(value)
      except ValueError:
        pass
  return steps


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x, spec: str = ".2f", na: str = "n/a") -> str:
  return format(x, spec) if _finite(x) else na


def _goal(goal: str, figure, target: float, higher: bool, text: str, na_reason: str = "") -> dict:
  met = None if not _finite(figure) else (figure >= target if higher else figure <= target)
  return {"goal": goal, "figure": figure if _finite(figure) else None, "target": target, "met": met,
          "text": text if _finite(figure) else (na_reason or "not measured")}


# ---- run 1: the job ----------------------------------------------------------------------------------

def summarize_run1(work: Path, cpu_memory: list[dict]) -> dict:
  parts = _parts(work)
  out = {}
  for stage in STAGES:
    log = _text(work / f"{stage}.log")
    done = re.search(rf"stage {stage} done: ([\d.]+) s, peak device memory (?:([\d.]+) GB|n/a)", log)
    part = parts.get(stage)
    out[stage] = {"status": _status(part), "limit_s": part and part["limit_s"], "wall_s": part and part["wall_s"],
                  "completed": bool(done) and part is not None and part["exit"] == 0,
                  "figures": {"stage_s": float(done.group(1)) if done else None,
                              "peak_gb": float(done.group(2)) if done and done.group(2) else None}}
  # The GRPO step as the job runs it: step 1 compiles, the last step samples nothing ahead; the steps
  # between (a rollout sampled ahead, rewards, the update) are the steady state.
  steps = _logged_scalars(_text(work / "grpo.log"))
  later = [s for n, s in sorted(steps.items()) if n >= 2 and all(f"time/{k}" in s for k in SPLIT)]
  later = [s for s in later if s["time/rollout"] > 0] or later
  split = {k: statistics.median(s[f"time/{k}"] for s in later) for k in SPLIT} if later else {}
  out["grpo"]["figures"].update({f"{k}_s": v for k, v in split.items()})
  predicted = {}
  for r in cpu_memory:
    if "function" in r and "peak_gb" in r:
      predicted[r["stage"]] = max(predicted.get(r["stage"], 0.0), r["peak_gb"])
  rows, all_done = [], all(out[s]["completed"] for s in STAGES)
  for stage in STAGES:
    s, f = out[stage], out[stage]["figures"]
    cpu = predicted.get(stage)
    rows.append((stage, s["status"], _fmt(f["stage_s"], ".1f") + " s" if _finite(f["stage_s"]) else "-",
                 f"{s['wall_s']} s of {s['limit_s']}" if s["wall_s"] is not None else "-",
                 _fmt(f["peak_gb"], ".1f", "n/a (not reported)") + (" GB" if _finite(f["peak_gb"]) else ""),
                 f"{cpu:.1f} GB" if cpu else "-"))
  table = ["| stage | status | stage time | process wall / limit | peak device memory | XLA CPU estimate |",
           "|---|---|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
  g = out["grpo"]["figures"]
  share = g["reward_s"] / g["step_s"] if _finite(g.get("reward_s")) and g.get("step_s") else None
  goals = [{"goal": "every stage of run 1 completes", "figure": sum(out[s]["completed"] for s in STAGES),
            "target": len(STAGES), "met": all_done, "any_shape": True,
            "text": ", ".join(f"{s} {out[s]['status']}" for s in STAGES)},
           _goal("GRPO step (the job's, 8 x 8): rewards <= 10% of it", share, GOALS["reward_share"], False,
                 f"{_fmt(share, '.1%')} of {_fmt(g.get('step_s'))} s (rollout {_fmt(g.get('rollout_s'))} s, reward "
                 f"{_fmt(g.get('reward_s'))} s, update {_fmt(g.get('update_s'))} s)", "the GRPO stage logged no step")]
  return {"parts": out, "goals": goals, "table": table}


# ---- run 2: the benchmarks ---------------------------------------------------------------------------

def summarize_run2(work: Path, cpu_memory: list[dict]) -> dict:
  parts = _parts(work)
  out = {name: {"status": _status(parts.get(name)), "limit_s": parts.get(name, {}).get("limit_s"),
                "wall_s": parts.get(name, {}).get("wall_s"), "figures": {}} for name in RUN2}
  table = ["| part | setting | measured | status |", "|---|---|---|---|"]
  goals = []
  gen = _jsonl(work / "generate.jsonl")
  g = gen[-1] if gen else {}
  out["generate"]["figures"] = {"ours_images_per_s": g.get("ours_images_per_s"),
                                "hf_images_per_s": g.get("hf_images_per_s"), "ratio": g.get("ratio"),
                                "roofline": g.get("roofline")}
  out["generate"]["rows"] = gen
  # bench.generate's per-step byte counts, where it gives them: what a decode step reads against what it must
  for k in ("must_read_bytes_per_step", "loop_read_bytes_per_step", "kv_read_ratio", "compile_s"):
    if _finite(g.get(k)):
      out["generate"]["figures"][k] = g[k]
  size = lambda b: f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.2f} MB"
  loop, must = g.get("loop_read_bytes_per_step"), g.get("must_read_bytes_per_step")
  reads = f"; a decode step reads {size(loop)} of the {size(must)} it must" if _finite(loop) and _finite(must) else ""
  table.append(f"| generation | {g.get('prompts', '?')} x {g.get('samples', '?')}, vs transformers | "
               f"{_fmt(g.get('ours_images_per_s'))} img/s, transformers {_fmt(g.get('hf_images_per_s'))} img/s, "
               f"{_fmt(g.get('ratio'))}x; roofline {_fmt(g.get('roofline'), '.1%', 'n/a (no HBM bandwidth)')}{reads}"
               f" | {out['generate']['status']} |")
  goals.append(_goal("generation >= 6x transformers at 16 x 4", g.get("ratio"), GOALS["gen_ratio"], True,
                     f"{_fmt(g.get('ratio'))}x at {g.get('prompts')} x {g.get('samples')}"))
  goals.append(_goal("generation >= 55% of the HBM roofline at 16 x 4", g.get("roofline"), GOALS["gen_roofline"], True,
                     f"{_fmt(g.get('roofline'), '.1%')}", "n/a: no HBM bandwidth for this device"))

  # each row twice when bench.memory finished (as measured, then at its end): the last one counts
  rows = list({(r["stage"], r["function"]): r for r in _jsonl(work / "grpo_split.log") if "function" in r}.values())
  fns = {r["function"]: r["run_s"] for r in rows if _finite(r.get("run_s"))}
  step = sum(fns.values()) if fns else None
  share = fns.get("reward_terms", 0.0) / step if step else None
  out["grpo_split"]["figures"] = {**{f"{k}_s": v for k, v in fns.items()}, "step_s": step, "reward_share": share}
  out["grpo_split"]["rows"] = rows
  table.append(f"| GRPO step split | 8 x 8 at the config's shape | {_fmt(step)} s (sum): "
               + ", ".join(f"{k} {v:.2f} s" for k, v in fns.items()) + f"; rewards {_fmt(share, '.1%')} | "
               f"{out['grpo_split']['status']} |")
  goals.append(_goal("GRPO step at the paper's shape: rewards <= 10% of it", share, GOALS["reward_share"], False,
                     f"{_fmt(share, '.1%')} of {_fmt(step)} s"))

  sft_rows = [r for r in _jsonl(work / "sft.jsonl")]
  out["sft"]["rows"] = sft_rows
  for r in sft_rows:
    key = f"b{r['batch']}_{r['remat']}"
    out["sft"]["figures"].update({f"{key}_ms_per_step": r.get("ms_per_step"), f"{key}_mfu": r.get("mfu")})
    what = (f"{_fmt(r.get('ms_per_step'), '.0f')} ms/step, {_fmt(r.get('tokens_per_s'), ',.0f')} tokens/s, "
            f"MFU {_fmt(r.get('mfu'), '.1%', 'n/a (no peak for this device)')}" if "error" not in r
            else f"failed: {r['error'][:120]}")
    sliced = r.get("micro_batch", r["batch"]) != r["batch"]
    micro = f" ({r['batch'] // r['micro_batch']} x {r['micro_batch']})" if sliced else ""
    table.append(f"| SFT | batch {r['batch']}{micro}, remat {r['remat']} | {what} | {out['sft']['status']} |")
  mfus = [r["mfu"] for r in sft_rows if _finite(r.get("mfu"))]
  goals.append(_goal("SFT >= 45% MFU", max(mfus) if mfus else None, GOALS["sft_mfu"], True,
                     "best " + _fmt(max(mfus) if mfus else None, ".1%") + " (" + ", ".join(
                         f"b{r['batch']} {r['remat']} {r['mfu']:.1%}" for r in sft_rows if _finite(r.get("mfu"))) + ")",
                     "n/a: no peak FLOP/s for this device" if sft_rows else "not measured"))

  hist = _jsonl(work / "history.jsonl")
  h = hist[-1] if hist else {}
  out["history"]["figures"] = {"ours_images_per_s": h.get("ours_images_per_s"),
                               "unshared_images_per_s": h.get("unshared_images_per_s"), "ratio": h.get("ratio")}
  out["history"]["rows"] = hist
  setting = f"{h.get('prompts', '?')} x {h.get('samples', '?')}, {h.get('history', '?')} images"
  table.append(f"| history prompts | {setting}: shared vs unshared | {_fmt(h.get('ours_images_per_s'))} vs "
               f"{_fmt(h.get('unshared_images_per_s'))} img/s, {_fmt(h.get('ratio'))}x | {out['history']['status']} |")

  # bench.memory's figures compiled here beside those compiled on CPU beforehand (the same config).
  cpu = {(r["stage"], r["function"]): r for r in cpu_memory if "function" in r}
  memory = []
  for r in rows:
    c = cpu.get((r["stage"], r["function"]), {})
    memory.append({"stage": r["stage"], "function": r["function"],
                   **{f"{pre}{k}": src.get(k) for k in ("peak_gb", "temp_gb", "flops", "bytes_accessed")
                      for pre, src in (("", r), ("cpu_", c))}})
  out["grpo_split"]["memory"] = memory
  table += ["", "bench.memory compiled here vs on CPU beforehand (GB = 1e9 bytes, per device):", "",
            "| function | peak here | peak CPU | temporaries here | temporaries CPU | GFLOP here | GFLOP CPU |",
            "|---|---|---|---|---|---|---|"]
  for m in memory:
    table.append(f"| {m['stage']}/{m['function']} | {_fmt(m['peak_gb'])} | {_fmt(m['cpu_peak_gb'], '.2f', '-')} | "
                 f"{_fmt(m['temp_gb'])} | {_fmt(m['cpu_temp_gb'], '.2f', '-')} | {_fmt(m['flops'] / 1e9, '.1f')} | "
                 f"{_fmt((m['cpu_flops'] or float('nan')) / 1e9, '.1f', '-')} |")
  return {"parts": out, "goals": goals, "table": table}


def summarize(run: str, work: Path, out_dir: Path, cpu_memory_file: str = "") -> dict:
  cpu_memory = _jsonl(Path(cpu_memory_file)) if cpu_memory_file else []
  result = (summarize_run1 if run == "run1" else summarize_run2)(work, cpu_memory)
  info = json.loads(_text(work / "info.json") or "{}")
  if info.get("preset") != "janus-pro-1b":  # the goals are set for the real shape: here only the figures count
    for g in result["goals"]:
      if g.pop("any_shape", False) is False:
        g["met"] = None
        g["text"] += f" (preset {info.get('preset')}: not the goal's shape)"
  goals = ["| goal | figure | met |", "|---|---|---|"] + [
      f"| {g['goal']} | {g['text']} | {'yes' if g['met'] else 'no' if g['met'] is False else 'n/a'} |"
      for g in result["goals"]]
  head = f"{run} on {info.get('device', '?')}, preset {info.get('preset', '?')} ({info.get('started', '')})"
  text = "\n".join([head, "", *result["table"], "", *goals])
  doc = {"run": run, **info, "parts": result["parts"], "goals": result["goals"], "table": text}
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f"{run}.json").write_text(json.dumps(doc, indent=1) + "\n")
  print(text)
  return doc


def main(argv: list[str]) -> int:
  if argv and argv[0] == "memory":
    run_memory(argv[1:])
    return 0
  if len(argv) >= 2 and argv[0] in ("world", "mtimes"):
    write_world(argv[1]) if argv[0] == "world" else restore_mtimes(argv[1])
    return 0
  if len(argv) >= 4 and argv[0] == "summary" and argv[1] in ("run1", "run2"):
    cpu = next((a.split("=", 1)[1] for a in argv[4:] if a.startswith("--cpu_memory=")), "")
    doc = summarize(argv[1], Path(argv[2]), Path(argv[3]), cpu)
    return 0 if all(p["status"] == "ok" for p in doc["parts"].values()) else 1  # every part ran to its end
  print(__doc__.split("\n\n")[1], file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
