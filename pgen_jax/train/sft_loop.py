"""The SFT stage: set-up, resume, the training loop, evaluation, sample grids, final checkpoint.

Writes under <workdir>/sft: latest/ and best/ (orbax), tb/ (TensorBoard), grids/*.png,
summary.json, and final/ (a pgen_jax checkpoint of the whole model that later stages load; with LoRA, the
adapters merged into the base weights, while latest/ and best/ hold what trains, base.json names the base
they train on and final_adapter/ holds the adapters alone in PEFT's format).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax import distributed
from pgen_jax.data.genre_probe import genre_hit_rate
from pgen_jax.data.pipeline import loader_from_config, source_from_config
from pgen_jax.fileio import write_json
from pgen_jax.models.checkpoint import is_pgen_checkpoint
from pgen_jax.models.llama import remat_policy
from pgen_jax.models.sharding import to_device
from pgen_jax.sampling import Sampler, SamplingConfig
from pgen_jax.sampling.prompter import Prompter, prompt_batch
from pgen_jax.setup import mesh_from_config
from pgen_jax.train.stage_model import check_base, save_final, training_model
from pgen_jax.train import harness, sft, steps, update
from pgen_jax.train.item_tokens import ItemTokens
from pgen_jax.viz import save_grid


def sft_dir(cfg) -> Path:
  return Path(cfg.workdir) / "sft"


def run_sft(cfg) -> dict:
  out = sft_dir(cfg)
  if (done := harness.finished("SFT", out)) is not None:
    return done
  out.mkdir(parents=True, exist_ok=True)
  sft_cfg = cfg.sft
  mesh = mesh_from_config(cfg)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (sft_cfg.batch_size // sft_cfg.grad_accum) % shards or sft_cfg.batch_size % jax.process_count():
    raise ValueError(f"sft.batch_size: {sft_cfg.batch_size} / grad_accum {sft_cfg.grad_accum} must split evenly over the "
                     f"{shards} data-parallel devices and {jax.process_count()} hosts")
  check_base(cfg, out)
  model = training_model(cfg, mesh, remat=remat_policy(sft_cfg.remat))
  prompter = Prompter(cfg, model.config)
  graphdef, params, frozen = nnx.split(model, update.stage_filter(cfg), ...)
  train_loader = loader_from_config(cfg, "train", batch_size=sft_cfg.batch_size // jax.process_count(), seed=cfg.seed,
                                    with_future=False)
  per_epoch = len(source_from_config(cfg, "train", with_future=False)) // sft_cfg.batch_size
  total = sft_cfg.num_steps or max(1, int(sft_cfg.epochs * per_epoch))
  for part, scale in sft_cfg.lr_scales.items():  # e.g. a test freezing what the config scales
    if scale != 1 and part not in sft_cfg.trainable:
      logging.warning("sft.lr_scales.%s has no effect: %s is frozen (not in sft.trainable)", part, part)
  tx = steps.sft_optimizer(sft_cfg, total)
  state = update.init_state(params, tx, cfg.seed, mesh)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
  replicated = NamedSharding(mesh, P())
  train_step = steps.sft_train_step(graphdef, tx, sft_cfg, state_sh, frozen_sh, mesh)
  eval_step = jax.jit(functools.partial(sft.eval_loss, graphdef), out_shardings=replicated)

  loop = harness.Harness("SFT", out, num_steps=total, log_every=sft_cfg.log_every, ckpt_every=sft_cfg.ckpt_every,
                         keep=sft_cfg.keep, max_bad_steps=sft_cfg.max_bad_steps)
  it = iter(train_loader)
  start, state, data_state = loop.resume(state)
  if data_state is not None:
    it.set_state(data_state.encode())
  summary = harness.load_summary(out)
  item_tokens = ItemTokens.build(cfg, model) if sft_cfg.pretokenize else None
  val_batches = _validation_batches(cfg, prompter, sft_cfg.eval_batches, item_tokens)
  sampler = Sampler(model, mesh, SamplingConfig(cfg_weight=sft_cfg.cfg_weight, num_samples=sft_cfg.grid_samples))

  def evaluate(step, params):
    losses = [float(eval_step(params, frozen, to_device(b, mesh))) for b in val_batches]
    val = float(np.mean(losses))
    loop.writer.write_scalars(step, {"val_loss": val})
    summary.setdefault("initial_val_loss", val)
    summary["val_loss"] = val
    write_json(out / "summary.json", summary)  # persists across a kill, like the checkpoints
    return val

  def train(step, state):
    raw = next(it)
    batch = prompter(raw)
    return train_step(state, frozen, to_device(item_tokens.replace_target(batch, raw) if item_tokens else batch, mesh))

  def eval_and_grid(step, state, m):
    if loop.due(step, sft_cfg.eval_every):
      val = evaluate(step, state["params"])
      loop.ckpts.save_best(step, state["params"], val)
      _grid(sampler, graphdef, state["params"], frozen, val_batches[0], mesh, out, step, loop.writer, cfg)

  if start == 0:
    evaluate(0, state["params"])
  report = lambda _, m: {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "skipped_steps": int(m["skipped"])}
  state = loop.run(start, state, train, report=report, after=eval_and_grid, data_state=it.get_state)
  loop.ckpts.wait()
  summary.update(steps=total, skipped_steps=int(jax.device_get(state["skipped"])))
  write_json(out / "summary.json", summary)
  final = nnx.merge(graphdef, state["params"], frozen)
  if cfg.data.name == "synthetic" and sft_cfg.genre_probe:
    summary["genre_probe"] = genre_hit_rate(cfg, final, mesh, prompter)
    loop.writer.write_scalars(total, {"genre_hit_rate": summary["genre_probe"]["hit_rate"]})
    write_json(out / "summary.json", summary)
  loop.writer.flush()
  ckpt = cfg.model.checkpoint
  save_final(cfg, mesh, final, out, hf_files=(Path(ckpt) / "hf" if is_pgen_checkpoint(ckpt) else ckpt) if ckpt else None)
  loop.close()
  logging.info("SFT done: %s", json.dumps(summary))
  return summary


def _validation_batches(cfg, prompter: Prompter, n: int, item_tokens: ItemTokens | None) -> list[dict]:
  """Prompter batches; with `item_tokens`, their target_tokens too (the images stay, for the grids)."""
  loader = loader_from_config(cfg, "validation", batch_size=cfg.sft.eval_batch_size // jax.process_count(),
                              seed=0, shuffle=False, num_epochs=1, with_future=False, workers=0)
  out = []
  for b in loader:
    b = {k: np.array(v) for k, v in b.items()}
    out.append(prompter(b))
    if item_tokens is not None:
      out[-1]["target_tokens"] = item_tokens.of_targets(b)
    if len(out) == n:
      break
  if not out:
    raise ValueError("the validation split has fewer windows than sft.eval_batch_size")
  return out


def _grid(sampler, graphdef, params, frozen, batch, mesh, out: Path, step: int, writer, cfg) -> None:
  """History strip | generated samples | ground truth, one row per validation example."""
  batch = distributed.gather_rows(batch)  # the Sampler takes the same prompts on every host: the global ones
  rows = min(4, batch["ids"].shape[0])
  sampler.state = jax.device_put(nnx.state(nnx.merge(graphdef, params, frozen)), sampler.state_shardings)
  pb = prompt_batch({k: v[:rows] for k, v in batch.items()}, cfg.prompt.uncond)
  gen = np.asarray(sampler(pb, jax.random.key(step)).images)
  save_grid(batch["history"][:rows], gen, batch["target"][:rows], out, step, writer)
