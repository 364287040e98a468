"""LoRA through the stages on the demo: a quantised base (model.lora.base_qtype) trains the adapters alone and
saves final/ merged into the float base; SFT writes the adapters in PEFT's format, which export copies; the
checkpoints name their base (a changed base stops a resume, one line, exit 2); kill -9 resume is bit-identical."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from configs.demo import get_config
from pgen_jax import main, settings
from pgen_jax.errors import ConfigError
from pgen_jax.fileio import tree_digest
from pgen_jax.models import load_janus, lora, quant
from pgen_jax.models.hf import export_hf
from pgen_jax.models.llama import remat_policy
from pgen_jax.setup import mesh_from_config, model_from_config
from pgen_jax.train.stage_model import BASE_FILE, training_model
from pgen_jax.train import steps, update
from pgen_jax.train.checkpoints import Checkpoints
from test_sft import ROOT, assert_same_final, plain_and_killed, run_main, sft_args

# One worker runs this module: its module fixture (minutes) is then made once, not once per worker.
pytestmark = pytest.mark.xdist_group("lora_stages")

STEPS = 3


def flat(state) -> dict:
  return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def qlora(tmp_path_factory):
  """The demo with LoRA (rank 4) on an int8 base, adapters alone trained: 3 SFT steps, 2 GRPO steps (fresh
  adapters on an int8 copy of SFT's merged result), then export."""
  tmp = tmp_path_factory.mktemp("qlora_demo")
  raw = get_config()
  raw.stages = ("prepare", "sft", "grpo", "export")
  raw.workdir, raw.data.root, raw.data.store = str(tmp / "run"), str(tmp / "world"), str(tmp / "data")
  raw.export.dir = str(tmp / "hf")
  raw.sft.update(dict(num_steps=STEPS, ckpt_every=STEPS, eval_every=STEPS, log_every=STEPS, eval_batches=1,
                      grid_samples=1, trainable=("language_model",), genre_probe=False))
  raw.grpo.update(dict(num_steps=2, ckpt_every=2, log_every=1, grid_every=2, prompts_per_step=2, group_size=4,
                       beta=0.01, sample_ahead=False, eval_every=0))
  raw.model.lora.rank = 4
  raw.model.lora.base_qtype = "int8"
  main.run(raw)
  return settings.from_config(raw)


def test_base_qtype_is_checked():
  raw = get_config()
  assert settings.from_config(raw).model.lora.base_qtype == "none"
  raw.model.lora.base_qtype = "int4"
  with pytest.raises(ConfigError, match="model.lora.base_qtype"):
    settings.from_config(raw)
  raw.model.lora.base_qtype = "nf4"  # rank 0: nothing to quantise under
  with pytest.raises(ConfigError, match="model.lora.rank > 0"):
    settings.from_config(raw)


def test_int8_base_trains_adapters_alone_and_final_merges_into_the_float_base(qlora):
  cfg = qlora
  mesh = mesh_from_config(cfg)
  model = training_model(cfg, mesh, remat=remat_policy(cfg.sft.remat))
  assert quant.base_qtype(model) == "int8"
  _, params, _ = nnx.split(model, update.stage_filter(cfg), ...)
  ckpts = Checkpoints(Path(cfg.workdir) / "sft")
  _, state, _ = ckpts.restore(STEPS, update.init_state(params, steps.sft_optimizer(cfg.sft, STEPS), cfg.seed, mesh))
  ckpts.close()
  before, after = flat(params), flat(state["params"])
  assert set(after) == set(flat(nnx.state(model, lora.ADAPTERS)))  # the adapters alone train
  assert all(not np.array_equal(before[k], after[k]) for k in after)
  # final/: a plain Janus, the float base (not the int8 one) plus (alpha / rank) A @ B, the rest as loaded
  final = load_janus(Path(cfg.workdir) / "sft" / "final", mesh=mesh)
  assert lora.lora_config(final) is None
  base, got = flat(nnx.state(model_from_config(cfg, mesh), nnx.Param)), flat(nnx.state(final, nnx.Param))
  assert set(got) == set(base)
  kernels = {k.removesuffix("/kernel_lora_a") for k in after if k.endswith("_lora_a")}
  for k in set(base) - {k + "/kernel" for k in kernels}:
    np.testing.assert_array_equal(got[k], base[k], err_msg=k)
  scale = cfg.model.lora.config().scale
  for k in kernels:
    delta = np.einsum("lir,lro->lio", after[k + "/kernel_lora_a"], after[k + "/kernel_lora_b"])
    np.testing.assert_allclose(got[k + "/kernel"], base[k + "/kernel"] + scale * delta, atol=1e-6, err_msg=k)
  assert (Path(cfg.workdir) / "sft" / BASE_FILE).exists()


def test_stages_write_the_adapters_in_peft_format_and_export_copies_grpos(qlora):
  cfg = qlora
  run = Path(cfg.workdir)
  names = ["adapter_config.json", "adapter_model.safetensors"]
  for stage in ("sft", "grpo"):
    assert sorted(p.name for p in (run / stage / "final_adapter").iterdir()) == names, stage
    config = json.loads((run / stage / "final_adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == cfg.model.lora.alpha
  # GRPO's adapters go on SFT's merged result, which its base.json names by digest
  assert config["base_model_name_or_path"] == str(run / "sft" / "final")
  recorded = json.loads((run / "grpo" / BASE_FILE).read_text())["base"]
  assert recorded == f"checkpoint {tree_digest(run / 'sft' / 'final')}"
  assert lora.lora_config(load_janus(run / "grpo" / "final", mesh=mesh_from_config(cfg))) is None
  exported = Path(cfg.export.dir) / "adapter"
  assert (Path(cfg.export.dir) / "model.safetensors").exists()
  for name in names:  # the newest training result's: GRPO's
    assert (run / "grpo" / "final_adapter" / name).read_bytes() == (exported / name).read_bytes(), name


def lora_args(workdir, store, steps=6):
  return [*sft_args(workdir, store, steps), "--config.model.lora.rank=4", "--config.sft.ckpt_every=2",
          "--config.sft.eval_every=6", "--config.sft.log_every=2"]


def test_resume_on_another_base_is_a_one_line_config_error(tmp_path):
  store, work = tmp_path / "shared", tmp_path / "run"
  args = lora_args(work, store, steps=2)
  assert (done := run_main(ROOT, *args)).returncode == 0, done.stderr[-3000:]
  shutil.rmtree(work / "sft" / "final")  # as if killed after its last checkpoint
  # another base: the random init of another seed (the settings check is told to let it through)
  bad = run_main(ROOT, *args, "--config.seed=7", "--keep_old_results")
  assert bad.returncode == 2, bad.stderr[-3000:]
  last = bad.stderr.strip().splitlines()[-1]
  assert "were trained on the base 'random" in last and "seed 7" in last and "--redo=sft" in last, last
  assert not (work / "sft" / "final").exists()


def test_kill_minus_nine_and_resume_with_lora_is_bit_identical(tmp_path):
  assert "resumed SFT at step" in plain_and_killed(tmp_path, lora_args, "sft", 2)
  assert_same_final(tmp_path)


def test_peft_puts_the_exported_adapter_on_its_base_and_computes_the_exported_model(qlora, tmp_path):
  """What a Hugging Face user does with <export.dir>/adapter: peft loads it onto its base (GRPO's: SFT's merged
  result, converted to transformers by our export_hf), and that computes as the exported merged model, which
  transformers loads from <export.dir> (fp32; the int8 base was only the training copy)."""
  import peft
  import torch
  import transformers as T

  run, exported = Path(qlora.workdir), Path(qlora.export.dir)
  export_hf(load_janus(run / "sft" / "final", mesh=mesh_from_config(qlora)), tmp_path / "base")
  ids = torch.tensor([[1, 5, 7, 9, 11, 13]])
  with torch.no_grad():
    base = T.JanusForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    before = base(input_ids=ids).logits.numpy()
    adapted = peft.PeftModel.from_pretrained(base, exported / "adapter").eval()
    got = adapted(input_ids=ids).logits.numpy()
    want = T.JanusForConditionalGeneration.from_pretrained(exported).eval()(input_ids=ids).logits.numpy()
  assert np.abs(want - before).max() > 1e-4  # GRPO's adapters changed the model
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
