"""What a run directory remembers: the settings each training stage ran with (<workdir>/<stage>/settings.json).

A stage with results (finished or resumable) that would now run with other values of the keys it depends
on would silently return or resume the old results; instead the job stops with one line naming the keys,
their old and new values and the stages, unless the user asks to keep the old results (--keep_old_results)
or to train those stages again (--redo=<stage>,...). Keys that change nothing a stage has done (how often
it logs or saves, where the scorer listens, a later stage's keys) never stop a run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax

from pgen_jax.errors import ConfigError
from pgen_jax.fileio import write_json

FILE = "settings.json"
# The config sections each stage's results depend on, and the stage whose results it starts from. The
# eval stage is not here: it records its own setup and redoes what was measured otherwise (eval/).
SECTIONS = {"vq": ("seed", "model", "data", "vq"), "sft": ("seed", "model", "data", "prompt", "sft"),
            "grpo": ("seed", "model", "data", "prompt", "grpo", "reward_models")}
STARTS_FROM = {"vq": None, "sft": "vq", "grpo": "sft"}
UNUSED = {"vq": ("model.lora.",)}  # keys of a stage's sections its results do not depend on (vq trains no adapters)
# Keys (their last part, or the whole dotted key) that change how a stage runs or reports, not its results.
LOGISTICS = {"log_every", "ckpt_every", "keep", "eval_every", "eval_batches", "eval_batch_size", "grid_every",
             "grid_samples", "save_rollouts", "genre_probe", "scorer_url", "scorer_token", "scorer_start",
             "scorer_device", "data.workers", "data.cache_mb", "data.store", "model.attention", "sft.cfg_weight"}


def _flat(node, prefix: str = "") -> dict:
  if dataclasses.is_dataclass(node):  # the typed settings: the same keys as the ConfigDict they came from
    node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
  out = {}
  for k, v in node.items():
    if hasattr(v, "items") or dataclasses.is_dataclass(v):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = json.loads(json.dumps(v))  # tuples -> lists, as the file will hold them
  return out


def _logistics(key: str) -> bool:
  return key in LOGISTICS or key.rpartition(".")[2] in LOGISTICS


def depends_on(cfg, stage: str, stages: tuple[str, ...]) -> dict:
  """The values of the keys `stage`'s results depend on: its sections, and those of the stages it starts
  from when they have results or run now (sft without a vq stage does not depend on vq.*)."""
  workdir, sections, unused = Path(cfg.workdir), set(), UNUSED.get(stage, ())
  while stage:
    sections.update(SECTIONS[stage])
    stage = STARTS_FROM[stage]
    if stage and not ((workdir / stage).exists() or stage in stages):
      break
  flat = _flat(cfg)
  return {k: v for k, v in sorted(flat.items())
          if k.split(".")[0] in sections and not _logistics(k) and not k.startswith(unused)}


def _has_results(stage_dir: Path) -> bool:
  """Whether a stage left anything but its settings (a run stopped before the stage began leaves none)."""
  return stage_dir.is_dir() and any(p.name != FILE for p in stage_dir.iterdir())


def check(cfg, stages: tuple[str, ...], *, redo: tuple[str, ...] = (), keep_old: bool = False) -> None:
  """Before the stages run: removes the results of the `redo` stages, then stops (ConfigError) if a stage
  to run has results made with other values of the keys it depends on, unless keep_old."""
  workdir = Path(cfg.workdir)
  bad = [s for s in redo if s not in SECTIONS]
  if bad:
    raise ConfigError(f"--redo: {bad} are not training stages; choose from {', '.join(SECTIONS)}")
  if jax.process_index() == 0:
    for stage in redo:
      if (workdir / stage).exists():
        shutil.rmtree(workdir / stage)
  if jax.process_count() > 1:  # nobody reads a stage directory process 0 is removing
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("run_settings.redo")
  changed, now = {}, _flat(cfg)
  for stage in (s for s in stages if s in SECTIONS):
    path = workdir / stage / FILE
    if not (path.exists() and _has_results(workdir / stage)):
      continue
    old = json.loads(path.read_text())
    # a key this version no longer has (renamed, as grpo.clip -> reward_models.clip) cannot be compared
    diff = [(k, old[k], now[k]) for k in old if k in now and old[k] != now[k]]
    if diff:
      changed[stage] = diff
  if changed and not keep_old:
    keys = {k: (a, b) for diff in changed.values() for k, a, b in diff}
    what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in keys.items())
    names = ",".join(changed)
    raise ConfigError(f"{what}: {names} in {workdir} ran with the old values; pass --redo={names} to run them "
                      "again with the new ones, or --keep_old_results to go on with what is there")


def record(cfg, stage: str, stages: tuple[str, ...]) -> None:
  """As a stage begins: the settings it runs with, unless it has results already (those keep theirs)."""
  workdir = Path(cfg.workdir)
  if stage in SECTIONS and jax.process_index() == 0 and not _has_results(workdir / stage):
    (workdir / stage).mkdir(parents=True, exist_ok=True)
    write_json(workdir / stage / FILE, depends_on(cfg, stage, stages))
