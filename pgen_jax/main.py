"""The pgen_jax job: `python -m pgen_jax.main --config=configs/<name>.py [--config.key=value ...]`.

The config names the stages to run in order (fetch, prepare, vq, sft, grpo, eval, export); each stage can
also be run alone with --config.stages=<name>,.

Failures a user can cause (config, data, missing files, network, scorer) end in one line on stderr
naming the key, file or URL, and an exit code: 2 config, 3 run stopped, 4 data or files, 5 download,
6 scorer. Anything else prints one line and exits 1; --debug shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pgen_jax import cli, distributed, run_config, run_settings, settings
from pgen_jax.data.pipeline import prepare_from_config, store_dir
from pgen_jax.errors import ConfigError
from pgen_jax.eval.evaluate import run_eval
from pgen_jax.fetch.stage import fetch_from_config
from pgen_jax.fileio import write_json
from pgen_jax.models.checkpoint import is_pgen_checkpoint
from pgen_jax.models.hf import export_hf
from pgen_jax.setup import mesh_from_config, model_from_config, trained_checkpoint, use_compile_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])
_REDO = flags.DEFINE_list("redo", [], "Training stages (vq, sft, grpo) whose results in the workdir are removed "
                          "and made again, e.g. after changing their settings.")
_KEEP_OLD = flags.DEFINE_bool("keep_old_results", False, "Go on with the workdir's results even where they were "
                              "made with other settings than the config's now.")


def export(cfg) -> None:
  """Writes the model as a transformers Janus directory (config.json + model.safetensors): the newest
  training result (<workdir>/grpo/final, else <workdir>/sft/final), else the configured model. A LoRA
  result's adapters alone (its stage's final_adapter/, PEFT's format) go to <export.dir>/adapter."""
  if Path(cfg.export.dir).exists():
    logging.info("%s exists: already exported", cfg.export.dir)
    return
  trained = trained_checkpoint(cfg)
  ckpt = str(trained) if trained else cfg.model.checkpoint
  side = Path(ckpt) / "hf" if ckpt and is_pgen_checkpoint(ckpt) else (ckpt or None)
  adapter = trained.parent / "final_adapter" if trained else None
  export_hf(model_from_config(cfg, mesh_from_config(cfg), ckpt or None), cfg.export.dir, side_files=side,
            adapter=adapter if adapter and adapter.is_dir() else None)
  logging.info("exported %s to %s", ckpt or "the initial model", cfg.export.dir)


def vq(cfg) -> None:
  """Trains the image tokenizer on the prepared items (small-image runs); later stages use it."""
  from pgen_jax.train.vq_loop import run_vq  # lazy: clu's TensorBoard writers import TensorFlow
  print(json.dumps(run_vq(cfg)))


def sft(cfg) -> None:
  """Supervised fine-tuning; resumes from <workdir>/sft/latest."""
  from pgen_jax.train.sft_loop import run_sft  # lazy: clu's TensorBoard writers import TensorFlow
  print(json.dumps(run_sft(cfg)))


def prepare(cfg) -> None:
  """Raw files -> prepared store (a no-op when the same inputs were prepared already)."""
  stats = distributed.first_then_others(lambda: prepare_from_config(cfg), "prepare")
  summary = {"splits": stats["splits"], "dropped": stats["dropped"], "users": stats.get("user_counts")}
  logging.info("prepared data in %s:\n%s", store_dir(cfg), json.dumps(summary, indent=2))
  print(json.dumps(summary))


def grpo(cfg) -> None:
  """Online GRPO from the SFT result; resumes from <workdir>/grpo/latest."""
  from pgen_jax.train.grpo_loop import run_grpo  # lazy: clu's TensorBoard writers import TensorFlow
  try:
    summary = run_grpo(cfg)
  finally:  # a scorer this stage started is not needed by the next ones
    if "pgen_jax.scorer.launch" in sys.modules:
      sys.modules["pgen_jax.scorer.launch"].stop_all()
  print(json.dumps({k: v for k, v in summary.items() if k != "rewards"}))


def evaluate(cfg) -> None:
  """The comparison of recommenders and generators: <workdir>/eval (results.json, results.md, report.html)."""
  result = run_eval(cfg)
  print(json.dumps(result))


def fetch(cfg) -> None:
  """Downloads the models, dataset and posters the config names and lacks (see pgen_jax/fetch)."""
  print(json.dumps(fetch_from_config(cfg)))


STAGES = {
    "fetch": fetch,
    "prepare": prepare,
    "vq": vq,
    "sft": sft,
    "grpo": grpo,
    "eval": evaluate,
    "export": export,
}


def run(raw, only: tuple[str, ...] | None = None, *, redo: tuple[str, ...] = (), keep_old: bool = False) -> None:
  """Types and checks the config, then runs its stages (or `only` these); files the fetch stage brings
  are checked after it. Stages with results made with other settings stop the run unless `redo` names
  them (their results are removed first) or `keep_old` (run_settings). Below here only the typed
  settings travel."""

  def check(fn, *args, **kw):
    try:
      return fn(*args, **kw)
    except ValueError as e:  # every ValueError of the config checks is about the config
      raise e if isinstance(e, ConfigError) else ConfigError(str(e)) from None

  cfg = check(settings.from_config, raw)  # every section checks itself as it is made
  stages = cfg.stages
  check(run_config.validate, cfg, files="fetch" not in stages + tuple(only or ()))
  use_compile_cache(cfg.compile_cache)
  run_settings.check(cfg, tuple(only or stages), redo=tuple(redo), keep_old=keep_old)
  if jax.process_index() == 0:  # what pgen_jax.generate reads back to rebuild the prompts and the store
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.workdir) / "config.json", raw.to_dict())
  checked = False
  for stage in only or stages:
    if stage != "fetch" and not checked:
      if "fetch" in stages:
        check(run_config.validate, cfg)
      check(run_config.check_against_model, cfg)
      checked = True
    logging.info("stage %s", stage)
    run_settings.record(cfg, stage, tuple(only or stages))
    t0 = time.perf_counter()
    STAGES[stage](cfg)
    logging.info("stage %s done: %.1f s, peak device memory %s", stage, time.perf_counter() - t0, _peak_memory())


def _peak_memory() -> str:
  """The devices' high-water mark of allocated bytes in this process so far (the largest over local
  devices), where the platform reports it (GPU, TPU); CPU reports none."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return f"{max(peaks) / 1e9:.2f} GB (the process so far)" if peaks else "n/a (not reported on this platform)"


def main(argv, only: tuple[str, ...] | None = None) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.show_logs()
  try:
    distributed.initialize()
    run(_CONFIG.value, only, redo=tuple(_REDO.value), keep_old=_KEEP_OLD.value)
  except (Exception, KeyboardInterrupt) as e:  # one line for the user; the traceback only with --debug
    cli.fail(e, prefix=f"{flags.FLAGS['config'].config_filename}: ")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
