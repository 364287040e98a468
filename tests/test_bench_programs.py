"""bench.memory compiles the very functions the loops run: a change in a loop's step maths changes the
benchmark's program, which stays the program the loop itself lowers (same builder, config and jit options)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs.demo import get_config
from pgen_jax.bench import programs
from pgen_jax.models.llama import remat_policy
from pgen_jax.setup import mesh_from_config, model_from_config
from pgen_jax.train import grpo, sft, steps, update

LENGTH = 24  # prompt tokens: one 16-token image block and a few more


@pytest.fixture
def world(tmp_path):
  """The demo config at a tiny shape, its mesh, and the abstract model bench.memory lowers."""
  cfg = get_config()
  cfg.workdir = str(tmp_path)
  cfg.model.preset, cfg.data.image_size, cfg.data.history_len = "tiny", 16, 1
  cfg.sft.batch_size, cfg.grpo.prompts_per_step, cfg.grpo.group_size, cfg.grpo.micro_batch = 8, 8, 2, 4
  mesh = mesh_from_config(cfg)
  return cfg, mesh, programs.abstract_model(cfg, mesh)


def loop_split(cfg, mesh, remat):
  """As the loops do: the configured model on the mesh with the stage's remat policy, split into trained and frozen."""
  model = model_from_config(cfg, mesh, remat=remat_policy(remat))
  return nnx.split(model, update.trainable_filter(tuple(cfg.sft.trainable)), ...)


def hlo(fn, args) -> str:
  return fn.lower(*args).as_text()


def test_a_changed_sft_loss_changes_the_benchmarked_train_step(world, monkeypatch):
  cfg, mesh, (graphdef, state, config) = world
  before = hlo(*programs.sft_train_step(cfg, mesh, graphdef, state, config, LENGTH))
  loss = sft.image_loss
  monkeypatch.setattr(sft, "image_loss", lambda *a: 2.0 * loss(*a))
  fn, (full, frozen, batch) = programs.sft_train_step(cfg, mesh, graphdef, state, config, LENGTH)
  after = hlo(fn, (full, frozen, batch))
  assert after != before
  # sft_loop's step: its builder on the loop's own (concrete, placed) state, the same batch shapes
  loop_gd, params, loop_frozen = loop_split(cfg, mesh, cfg.sft.remat)
  tx = steps.sft_optimizer(cfg.sft, cfg.sft.num_steps)
  loop_state = update.init_state(params, tx, cfg.seed, mesh)
  shardings = lambda t: jax.tree.map(lambda x: x.sharding, t)
  loop_fn = steps.sft_train_step(loop_gd, tx, cfg.sft, shardings(loop_state), shardings(loop_frozen), mesh)
  assert hlo(loop_fn, (loop_state, loop_frozen, batch)) == after


def test_a_changed_grpo_loss_changes_the_benchmarked_update(world, monkeypatch):
  cfg, mesh, (graphdef, state, config) = world
  before = hlo(*programs.grpo_update(cfg, mesh, graphdef, state, config, LENGTH)["update_step"])
  loss = grpo.grpo_loss

  def doubled(*a, **k):
    value, metrics = loss(*a, **k)
    return 2.0 * value, metrics
  monkeypatch.setattr(grpo, "grpo_loss", doubled)
  fn, (full, frozen, ref, batch) = programs.grpo_update(cfg, mesh, graphdef, state, config, LENGTH)["update_step"]
  after = hlo(fn, (full, frozen, ref, batch))
  assert after != before
  # grpo_loop's update (StepFunctions): its builder on the loop's own state
  loop_gd, params, loop_frozen = loop_split(cfg, mesh, cfg.grpo.remat)
  tx = steps.grpo_optimizer(cfg.grpo)
  loop_state = update.init_state(params, tx, cfg.seed, mesh)
  loop_ref = jax.tree.map(jnp.copy, params) if cfg.grpo.beta else None
  loop_fn = steps.grpo_update_step(loop_gd, tx, cfg.grpo, cfg.prompt, jax.tree.map(lambda x: x.sharding, loop_state),
                                   mesh)
  assert hlo(loop_fn, (loop_state, loop_frozen, loop_ref, batch)) == after
