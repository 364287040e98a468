"""LoRA in the training stages (model.lora.rank > 0) on the demo config: SFT trains the adapters and the
unadapted parts of sft.trainable, leaves the base bit-identical and saves a plain merged Janus; GRPO's KL
reference is the same model with its adapters off."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.demo import get_config
from pgen_jax import main, settings
from pgen_jax.errors import ConfigError
from pgen_jax.models import Janus, load_janus, lora, preset, tiny
from pgen_jax.models.llama import remat_policy
from pgen_jax.setup import mesh_from_config
from pgen_jax.train.stage_model import training_model
from pgen_jax.train import grpo, steps, update
from pgen_jax.train.checkpoints import Checkpoints

# One worker runs this module: its module fixture (minutes) is then made once, not once per worker.
pytestmark = pytest.mark.xdist_group("lora_train")

TRAINABLE = ("language_model", "generation_head")  # adapters, and one part that carries none


def flat(state) -> dict:
  return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def flat_paths(state) -> list[str]:  # abstract states too
  return ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """The demo's config with LoRA (rank 4), run once: 3 SFT steps, then 2 GRPO steps (beta > 0) with fresh
  adapters on the merged SFT result (two: with B zero, the first step leaves A as it is)."""
  tmp = tmp_path_factory.mktemp("lora_demo")
  raw = get_config()
  raw.stages = ("prepare", "sft", "grpo")
  raw.workdir, raw.data.root, raw.data.store = str(tmp / "run"), str(tmp / "world"), str(tmp / "data")
  raw.sft.update(dict(num_steps=3, ckpt_every=3, eval_every=3, log_every=3, eval_batches=1, grid_samples=1,
                      trainable=TRAINABLE))
  raw.grpo.update(dict(num_steps=2, ckpt_every=2, log_every=1, grid_every=2, prompts_per_step=2, group_size=4,
                       beta=0.01, sample_ahead=False, eval_every=0))
  raw.model.lora.rank = 4
  main.run(raw)
  return settings.from_config(raw)


def trained(cfg, stage: str, steps_: int, tx, checkpoint=None):
  """(the stage's initial adapted model, rebuilt as the stage builds it (seeded), its trainable params,
  graphdef and frozen state, and the training state of its checkpoint `steps_`)."""
  mesh = mesh_from_config(cfg)
  model = training_model(cfg, mesh, checkpoint, remat=remat_policy(getattr(cfg, stage).remat))
  graphdef, params, frozen = nnx.split(model, update.stage_filter(cfg), ...)
  ckpts = Checkpoints(Path(cfg.workdir) / stage)
  _, state, _ = ckpts.restore(steps_, update.init_state(params, tx, cfg.seed, mesh))
  ckpts.close()
  return model, params, graphdef, frozen, state


def check_only_adapters_and_head_trained(model, params, state, final) -> None:
  """The checkpoint trains the adapters and the generation head alone, every one of them changed; the final
  model is a plain Janus whose other parameters are the start's, bit for bit."""
  before, after = flat(params), flat(state["params"])
  adapters = set(flat(nnx.state(model, lora.ADAPTERS)))
  assert set(after) == adapters | {k for k in after if k.startswith("generation_head/")}
  assert len(after) > len(adapters)
  assert all(not np.array_equal(before[k], after[k]) for k in after), "every adapter and the head changed"
  # optimizer state for the trained parameters alone: AdamW's two moments of each
  assert sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim) == 2 * sum(v.size for v in after.values())
  assert lora.lora_config(final) is None
  init, got = flat(nnx.state(model, lora.BASE)), flat(nnx.state(final, nnx.Param))
  assert set(got) == set(init)
  kernels = {k.removesuffix("_lora_a") for k in adapters if k.endswith("_lora_a")}
  for k in set(init) - kernels - set(after):  # the frozen base, bit-identical
    np.testing.assert_array_equal(got[k], init[k], err_msg=k)
  for k in kernels:  # the adapters merged in
    assert not np.array_equal(got[k], init[k]), k


def test_config_is_checked_by_its_section():
  cfg = get_config()
  assert settings.from_config(cfg).model.lora.config() is None  # rank 0: off
  cfg.model.lora.rank = 4
  assert settings.from_config(cfg).model.lora.config() == lora.LoraConfig(4, 32.0, lora.DEFAULT_TARGET)
  for key, value, match in (("rank", -1, "model.lora.rank"), ("alpha", 0.0, "model.lora.alpha"),
                            ("target", "(", "model.lora.target")):
    bad = get_config()
    bad.model.lora.rank = 4
    bad.model.lora[key] = value
    with pytest.raises(ConfigError, match=match):
      settings.from_config(bad)


def test_sft_trains_adapters_and_saves_the_merged_model(demo):
  cfg = demo
  model, params, graphdef, frozen, state = trained(cfg, "sft", 3, steps.sft_optimizer(cfg.sft, 3))
  final = load_janus(Path(cfg.workdir) / "sft" / "final", mesh=mesh_from_config(cfg))
  check_only_adapters_and_head_trained(model, params, state, final)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(3, 200, (2, 6)), jnp.int32)
  tokens = jnp.asarray(rng.integers(0, model.config.vq.num_embeddings, (2, 8)), jnp.int32)
  logp = lambda m: grpo.image_token_logprobs(m, ids, jnp.ones_like(ids), jnp.zeros((0, 32, 32, 3)), tokens)
  adapted = nnx.merge(graphdef, state["params"], frozen)
  np.testing.assert_allclose(np.asarray(logp(final)), np.asarray(logp(adapted)), atol=1e-5, rtol=0)


def test_grpo_step_trains_only_adapters_on_the_sft_result(demo):
  cfg = demo
  sft_final = Path(cfg.workdir) / "sft" / "final"
  model, params, _, _, state = trained(cfg, "grpo", 2, steps.grpo_optimizer(cfg.grpo), sft_final)
  final = load_janus(Path(cfg.workdir) / "grpo" / "final", mesh=mesh_from_config(cfg))
  check_only_adapters_and_head_trained(model, params, state, final)
  summary = json.loads((Path(cfg.workdir) / "grpo" / "summary.json").read_text())
  assert len(summary["rewards"]) == 2


def test_grpo_update_trains_only_adapters_against_the_unadapted_reference():
  """One GRPO update (beta > 0) of an adapted tiny Janus, trainable as the stages split it: only the
  adapters change, and the KL's reference is the base model (no copy of the language model kept)."""
  base = Janus(tiny(), nnx.Rngs(0))
  model = lora.apply_lora(base, lora.LoraConfig(rank=4, alpha=8.0))
  graphdef, params, frozen = nnx.split(model, lora.trainable_filter(("language_model",)), ...)
  ref_params = grpo.reference_params(params)
  assert not jax.tree.leaves(ref_params)  # nothing but the adapters trains: nothing to copy
  rng = np.random.default_rng(0)
  b, g, t = 2, 2, 8
  ids = jnp.asarray(rng.integers(3, 300, (b, 6)), jnp.int32)
  batch = {"ids": ids, "mask": jnp.ones_like(ids), "uncond": ids, "uncond_mask": jnp.ones_like(ids),
           "images": jnp.zeros((b, 0, 16, 16, 3), jnp.uint8),
           "tokens": jnp.asarray(rng.integers(0, 64, (b * g, t)), jnp.int32),
           "old_logp": jnp.zeros((b * g, t)), "advantages": jnp.asarray([1.0, -1.0, 0.5, -0.5]),
           "weights": jnp.ones((b * g,)), "on_policy": jnp.asarray(True)}
  cfg = grpo.GRPOConfig(beta=0.5)
  tx = update.make_optimizer(1e-2, 0, 3, 0.9, 0.95, 0.0, 1.0)
  state = update.init_state(params, tx)
  step = jax.jit(lambda s, bt: grpo.update_step(graphdef, tx, cfg, s, frozen, ref_params, bt))
  state, m = step(state, batch)
  assert float(m["kl"]) == pytest.approx(0.0, abs=1e-7)  # zero-init B: the policy is the reference
  before, after = flat(params), flat(state["params"])
  assert set(after) == set(flat(nnx.state(model, lora.ADAPTERS)))
  assert all(not np.array_equal(before[k], after[k]) for k in after if k.endswith("_lora_b"))
  state, m = step(state, batch)
  assert float(m["kl"]) > 0  # the adapted policy moved away from the base model
  # the reference in the loss is the base model's log-probs: the KL recomputed from them agrees
  trained = nnx.merge(graphdef, state["params"], frozen)
  images = jnp.zeros((0, 16, 16, 3))
  lp = lambda mdl: grpo.image_token_logprobs(mdl, batch["ids"], batch["mask"], images, batch["tokens"])
  with lora.adapters_off(trained):
    off = lp(trained)
  np.testing.assert_array_equal(np.asarray(off), np.asarray(lp(base)))


def test_bench_memory_builds_the_adapted_training_state():
  """bench.memory's abstract training state (programs.train_state) with LoRA: the adapters and the unadapted
  parts of sft.trainable, AdamW moments for those alone; GRPO's reference keeps no adapter and no LM weight.
  Lowered, not compiled (the compile: `python -m pgen_jax.bench.memory ... --config.model.lora.rank=16`)."""
  from pgen_jax.bench import programs
  raw = get_config()
  raw.model.lora.rank = 4
  cfg = settings.from_config(raw)
  mesh = mesh_from_config(cfg)
  graphdef, state, config = programs.abstract_model(cfg, mesh)
  fn, (full, frozen, batch) = programs.sft_train_step(cfg, mesh, graphdef, state, config, 64)
  keys = set(flat_paths(full["params"]))
  adapters = {k for k in keys if "_lora_" in k}
  plain = set(cfg.sft.trainable) - {"language_model"}
  assert adapters and keys - adapters and {k.split("/")[0] for k in keys - adapters} <= plain
  assert not {k for k in flat_paths(frozen) if "_lora_" in k}
  sizes = lambda tree: sum(x.size for x in jax.tree.leaves(tree) if x.ndim)
  assert sizes(full["opt_state"]) == 2 * sizes(full["params"])
  fn.lower(full, frozen, batch)
  grpo_fns = programs.grpo_update(cfg, mesh, graphdef, state, config, 64)
  _, (_, _, ref, _) = grpo_fns["update_step"]
  assert {k.split("/")[0] for k in flat_paths(ref)} <= plain and not any("_lora_" in k for k in flat_paths(ref))


def test_bench_memory_quantises_the_training_model_and_not_evals():
  """With model.lora.base_qtype=nf4, bench.memory's training model stores the adapted kernels as qwix's nf4
  (4-bit codes, as setup builds it for the training stages), while eval's is the plain merged Janus."""
  from pgen_jax.bench import programs
  raw = get_config()
  raw.model.lora.rank, raw.model.lora.base_qtype = 4, "nf4"
  cfg = settings.from_config(raw)
  mesh = mesh_from_config(cfg)
  _, trained_state, _ = programs.abstract_model(cfg, mesh)
  _, plain_state, _ = programs.abstract_model(cfg, mesh, trained=False)
  built = nnx.state(training_model(cfg, mesh), nnx.Param)
  shapes = lambda s: {"/".join(map(str, p)): (v.value.shape, v.value.dtype) for p, v in nnx.to_flat_state(s)}
  assert shapes(trained_state) == shapes(built)  # the very model the stages train
  codes = [k for k in flat_paths(trained_state) if k.endswith("kernel/array/qvalue")]
  assert codes and all(shapes(trained_state)[k][1] == jnp.uint4 for k in codes)
  assert not [k for k in flat_paths(plain_state) if "_lora_" in k or "qvalue" in k]
  assert flat_paths(plain_state) == flat_paths(nnx.state(nnx.eval_shape(lambda: Janus(preset(cfg.model.preset), nnx.Rngs(0))), nnx.Param))
