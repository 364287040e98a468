"""The model a training stage trains and what it leaves of it. With LoRA (model.lora.rank > 0): the
adapters on the configured base, its kernels quantised as model.lora.base_qtype says; base.json naming that
base (a resume on another is a ConfigError); final_adapter/ (PEFT's format) and final/, the adapters merged
into the float base. Without: the model as setup.model_from_config builds it, final/ as trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
from flax import nnx
from jax.experimental import multihost_utils

from pgen_jax.errors import ConfigError
from pgen_jax.fileio import tree_digest, write_json
from pgen_jax.models import Janus, lora, quant
from pgen_jax.models.checkpoint import save_janus
from pgen_jax.models.hf import export_peft
from pgen_jax.setup import model_from_config, tokenizer_dir


def training_model(cfg, mesh, checkpoint: str | Path | None = None, *, remat="none") -> Janus:
  """model_from_config's Janus, with LoRA adapters (model.lora, seeded by cfg.seed) when model.lora.rank > 0,
  their base kernels quantised when model.lora.base_qtype says so (the float ones are not kept): the model
  a training stage trains."""
  model = model_from_config(cfg, mesh, checkpoint, remat=remat)
  lora_cfg = cfg.model.lora.config()
  if lora_cfg is None:
    return model
  adapted = lora.apply_lora(model, lora_cfg, rngs=cfg.seed)
  del model  # the float base lives on in `adapted` alone, until quantize_base replaces its kernels
  return quant.quantize_base(adapted, cfg.model.lora.base_qtype)


def plain_model(model, cfg=None, mesh=None, checkpoint: str | Path | None = None) -> Janus:
  """A training stage's final model as a plain Janus (what eval, generate and export load): the adapters
  merged into the base weights, if any. A quantised base cannot take them (nor should the merge carry its
  rounding): the float base is loaded again from what the stage started from (cfg, mesh, `checkpoint` as
  given to training_model), and every parameter but the quantised kernels copied into it from `model`."""
  if lora.lora_config(model) is None:
    return model
  if quant.base_qtype(model) is None:
    return lora.merge(model)
  if cfg is None or mesh is None:
    raise ValueError("plain_model of a quantised base needs the stage's cfg and mesh to reload the float base")
  base = lora.apply_lora(model_from_config(cfg, mesh, checkpoint), lora.lora_config(model), rngs=cfg.seed)
  target = nnx.state(base, nnx.Param)
  want = dict(nnx.to_flat_state(target))
  # The adapters and any other trained part have the same paths in both; the quantised kernels (under
  # kernel/array/...) have none in the float model, whose kernels stay as loaded.
  got = [(p, v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p in want]
  for p, v in got:
    if want[p][...].shape != v[...].shape:
      raise ValueError(f"{'/'.join(map(str, p))}: {v[...].shape} in the trained model, {want[p][...].shape} "
                       "in its base")
  nnx.update(base, nnx.from_flat_state(got))
  return lora.merge(base)


BASE_FILE = "base.json"  # beside a stage's latest/: what its adapters were trained on


def base_digest(cfg, checkpoint: str | Path | None = None) -> str:
  """What training_model(cfg, mesh, checkpoint) builds on: its checkpoint directory's digest
  (fileio.tree_digest), or the random init's preset and seed, and the vq stage's tokenizer where it is used."""
  path = checkpoint or cfg.model.checkpoint
  name = f"checkpoint {tree_digest(path)}" if path else f"random {cfg.model.preset} seed {cfg.seed}"
  if checkpoint is None and tokenizer_dir(cfg).exists():
    name += f", tokenizer {tree_digest(tokenizer_dir(cfg))}"
  return name


def check_base(cfg, out: Path, checkpoint: str | Path | None = None) -> None:
  """With LoRA, a stage's checkpoints (latest/, best/) hold the adapters alone: on resume the base must be
  the one they were trained on (a ConfigError naming both), and a fresh start records it (out/base.json)."""
  if cfg.model.lora.config() is None:
    return
  now = base_digest(cfg, checkpoint)
  record = Path(out) / BASE_FILE
  started = any((Path(out) / "latest").glob("[0-9]*"))
  if started and record.exists():
    then = json.loads(record.read_text())["base"]
    if then != now:
      raise ConfigError(f"model.lora: the adapters in {Path(out) / 'latest'} were trained on the base "
                        f"'{then}', the base is now '{now}'; restore that base, or start the stage afresh "
                        f"(--redo={Path(out).name})")
  if jax.process_index() == 0:
    write_json(record, {"base": now})


def save_final(cfg, mesh, model, out: Path, checkpoint: str | Path | None = None, hf_files=None) -> None:
  """A training stage's results: out/final (plain_model's Janus) and, with LoRA, first out/final_adapter, the
  adapters alone in PEFT's format (hf.export_peft; export copies it). final/ is written last: its presence
  marks the stage done, and a final_adapter/ left by a killed run is written again."""
  if lora.lora_config(model) is not None:
    host = model
    if jax.process_count() > 1:  # the adapters whole on every host (a collective), for process 0 to write
      host = nnx.clone(model)
      nnx.update(host, multihost_utils.process_allgather(nnx.state(model, lora.ADAPTERS), tiled=True))
    if jax.process_index() == 0:
      adapter = Path(out) / "final_adapter"
      shutil.rmtree(adapter, ignore_errors=True)
      path = checkpoint or cfg.model.checkpoint
      export_peft(host, adapter, base_model=str(path) if path else f"random {cfg.model.preset} seed {cfg.seed}")
  save_janus(plain_model(model, cfg, mesh, checkpoint), Path(out) / "final", hf_files=hf_files)
