"""bench.memory compiles the very functions the loops run: a change in a loop's step maths changes the
benchmark's program, which stays the program the loop itself lowers (same builder, config and jit options)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.demo import get_config
from pgen_jax import settings
from pgen_jax.bench import programs
from pgen_jax.eval.measure import MetricModels, metric_model_section
from pgen_jax.rewards import compose
from pgen_jax.rewards.models import load_reward_models
from pgen_jax.sampling import Sampler
from pgen_jax.models.llama import remat_policy
from pgen_jax.setup import mesh_from_config, model_from_config
from pgen_jax.train import grpo, sft, steps, update
from pgen_jax.train.grpo_rewards import Rewards

LENGTH = 24  # prompt tokens: one 16-token image block and a few more


def make_world(tmp_path, reward_models: bool = False):
  """The demo config at a tiny shape (typed, as main and bench.memory make it), its mesh, and the abstract
  model bench.memory lowers. reward_models: the GRPO reward and the eval metrics from random tiny CLIP/DINO
  (what a run loads from directories)."""
  raw = get_config()
  raw.workdir = str(tmp_path)
  raw.model.preset, raw.data.image_size, raw.data.history_len = "tiny", 16, 1
  raw.sft.batch_size, raw.grpo.prompts_per_step, raw.grpo.group_size, raw.grpo.micro_batch = 8, 8, 2, 4
  if reward_models:
    raw.grpo.reward = "models"
    raw.reward_models.clip, raw.reward_models.dino, raw.reward_models.dino_size = "random:tiny", "random:tiny", 16
  cfg = settings.from_config(raw)
  mesh = mesh_from_config(cfg)
  return cfg, mesh, programs.abstract_model(cfg, mesh)


@pytest.fixture
def world(tmp_path):
  return make_world(tmp_path)


@pytest.fixture
def models_world(tmp_path):
  return make_world(tmp_path, reward_models=True)


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


def test_a_changed_reward_term_changes_the_benchmarked_reward_terms(models_world, monkeypatch):
  cfg, mesh, _ = models_world
  fn, args = programs.reward_terms(cfg, mesh)
  before = hlo(fn, args)
  terms = compose._image_terms
  monkeypatch.setattr(compose, "_image_terms", lambda *a: {k: 2.0 * v for k, v in terms(*a).items()})
  fn, (states, data) = programs.reward_terms(cfg, mesh)
  after = hlo(fn, (states, data))
  assert after != before
  # the GRPO loop's rewards (Rewards: its models, its RewardConfig, its jitted terms) on the same data
  rewards = Rewards(cfg, model_from_config(cfg, mesh), mesh)
  loop_fn, loop_states = rewards.models.jitted_terms(rewards.reward_cfg)
  assert hlo(loop_fn, (loop_states, data)) == after


def test_the_eval_metric_embeddings_are_the_eval_stages(models_world):
  cfg, mesh, _ = models_world
  fns = programs.metric_embeddings(cfg, mesh)
  assert set(fns) == {"clip", "dino"}
  # as eval's Comparison loads its metric models: fp32, the reward_models section with eval.clip/.dino
  metrics = MetricModels(load_reward_models(metric_model_section(cfg), mesh, np.float32))
  for kind, (fn, (_, chunk)) in fns.items():
    loop_fn, state = metrics.embedder(kind)
    assert hlo(loop_fn, (state, chunk)) == hlo(fn, (fns[kind][1][0], chunk))
    images = np.random.default_rng(0).integers(0, 256, (metrics.chunk, 16, 16, 3), np.uint8)
    by_model = np.asarray(metrics.m.encoder(kind)(getattr(metrics.m, kind), jnp.asarray(images)))
    np.testing.assert_allclose(getattr(metrics, kind)(images), by_model, rtol=1e-5, atol=1e-5)  # jit vs eager


def test_the_rollout_sampler_ignores_the_training_remat(world):
  """The GRPO loop samples with the model it trains (remat full at the paper's shape): the sampler's
  program is the one of the model built without remat (its prefill is never differentiated)."""
  cfg, mesh, (graphdef, state, config) = world
  scfg = programs.rollout_sampling(cfg)
  plain = hlo(*programs.sampler(cfg, mesh, graphdef, state, config, scfg, 2, LENGTH))
  remat_gd = programs.stage_graphdef(cfg, config, "full")
  assert remat_gd != graphdef
  assert hlo(*programs.sampler(cfg, mesh, remat_gd, state, config, scfg, 2, LENGTH)) == plain
  # and it is the loop's Sampler on the loop's (remat) model
  sampler = Sampler(model_from_config(cfg, mesh, remat="full"), mesh, scfg)
  _, (_, *inputs) = programs.sampler(cfg, mesh, graphdef, state, config, scfg, 2, LENGTH)
  assert hlo(sampler.compiled(cfg.prompt.uncond == "keep_images"), (sampler.state, *inputs)) == plain
