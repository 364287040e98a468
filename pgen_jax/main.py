"""The pgen_jax job: `python -m pgen_jax.main --config=configs/<name>.py [--config.key=value ...]`.

The config names the stages to run in order (prepare, vq, sft, grpo, eval, export); each stage can
also be run alone with --config.stages=<name>,.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pgen_jax import distributed, run_config
from pgen_jax.fileio import write_json

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def export(cfg) -> None:
  """Writes the model as a transformers Janus directory (config.json + model.safetensors): the newest
  training result (<workdir>/grpo/final, else <workdir>/sft/final), else the configured model."""
  from pathlib import Path

  from converters.janus import export_hf
  from pgen_jax.models.checkpoint import is_pgen_checkpoint
  from pgen_jax.train.setup import mesh_from_config, model_from_config, trained_checkpoint
  if Path(cfg.export.dir).exists():
    logging.info("%s exists: already exported", cfg.export.dir)
    return
  trained = trained_checkpoint(cfg)
  ckpt = str(trained) if trained else cfg.model.checkpoint
  side = Path(ckpt) / "hf" if ckpt and is_pgen_checkpoint(ckpt) else (ckpt or None)
  export_hf(model_from_config(cfg, mesh_from_config(cfg), ckpt or None), cfg.export.dir, side_files=side)
  logging.info("exported %s to %s", ckpt or "the initial model", cfg.export.dir)


def vq(cfg) -> None:
  """Trains the image tokenizer on the prepared items (small-image runs); SFT then uses it."""
  import json
  from pgen_jax.train.vq_loop import run_vq
  print(json.dumps(run_vq(cfg)))


def sft(cfg) -> None:
  """Supervised fine-tuning; resumes from <workdir>/sft/latest."""
  import json
  from pgen_jax.train.loop import run_sft
  print(json.dumps(run_sft(cfg)))


def prepare(cfg) -> None:
  """Raw files -> prepared store (a no-op when the same inputs were prepared already)."""
  import json
  from pgen_jax.data.pipeline import prepare_from_config, store_dir
  stats = prepare_from_config(cfg)
  logging.info("prepared data in %s:\n%s", store_dir(cfg), json.dumps(
      {"splits": stats["splits"], "dropped": stats["dropped"]}, indent=2))
  print(json.dumps({"splits": stats["splits"], "dropped": stats["dropped"]}))


def grpo(cfg) -> None:
  """Online GRPO from the SFT result; resumes from <workdir>/grpo/latest."""
  import json
  from pgen_jax.train.grpo_loop import run_grpo
  summary = run_grpo(cfg)
  print(json.dumps({k: v for k, v in summary.items() if k != "rewards"}))


def evaluate(cfg) -> None:
  """Generates for the test windows and writes <workdir>/eval (metrics.json, samples.jsonl, images/)."""
  import json
  from pgen_jax.eval.evaluate import run_eval
  result = run_eval(cfg)
  print(json.dumps(result))


STAGES = {
    "prepare": prepare,
    "vq": vq,
    "sft": sft,
    "grpo": grpo,
    "eval": evaluate,
    "export": export,
}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  cfg = _CONFIG.value
  try:
    run_config.validate(cfg)
  except ValueError as e:
    print(f"{flags.FLAGS['config'].config_filename}: config error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:  # what pgen_jax.generate reads back to rebuild the prompts and the store
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.workdir) / "config.json", cfg.to_dict())
  for stage in cfg.stages:
    logging.info("stage %s", stage)
    from pgen_jax.train.update import RunStopped
    try:
      STAGES[stage](cfg)
    except RunStopped as e:
      print(f"stopped: {e}", file=sys.stderr)
      sys.exit(3)


if __name__ == "__main__":
  app.run(main)
