"""The typed config: every config file makes its sections; a bad key or value is one ConfigError naming it."""

import math

import pytest

from configs import accel_run1, bench_grpo_1b, demo, movielens, pixelrec
from pgen_jax.errors import ConfigError
from pgen_jax.settings import from_config


@pytest.mark.parametrize("module", [demo, movielens, pixelrec, accel_run1, bench_grpo_1b])
def test_every_config_file_makes_its_typed_sections(module):
  cfg = module.get_config()
  s = from_config(cfg)
  # the sections hold the config's values, lists as tuples, nested dicts as dicts
  assert s.sft.lr == cfg.sft.lr and s.grpo.group_size == cfg.grpo.group_size and s.data.name == cfg.data.name
  assert s.stages == tuple(cfg.stages) and s.sft.trainable == tuple(cfg.sft.trainable)
  assert s.grpo.reward_weights == dict(cfg.grpo.reward_weights) and s.fetch.janus.repo == cfg.fetch.janus.repo
  assert s.mesh.fsdp == cfg.mesh.fsdp and s.eval.sasrec["dim"] == cfg.eval.sasrec.dim


def broken(path: str, value):
  cfg = demo.get_config().to_dict()
  *parents, last = path.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  node[last] = value
  return cfg


@pytest.mark.parametrize("path, value, message", [
    ("sft.lrr", 1.0, "sft.lrr: no such key; the closest is sft.lr"),
    ("eval.windowz", 3, "eval.windowz: no such key; the closest is eval.windows"),
    ("sft.lr", math.inf, "sft.lr: inf; must be a finite number"),
    ("grpo.reward_weights.clip_history", math.nan, "grpo.reward_weights.clip_history: nan; must be a finite number"),
    ("sft.lr", 0.0, "sft.lr: 0.0 must be a number > 0"),
    ("sft.batch_size", 0, "sft.batch_size: 0 must be an integer >= 1"),
    ("sft.grad_accum", 3, "sft.batch_size: 8 is not a multiple of sft.grad_accum"),
    ("sft.trainable", ("language_model", "wings"), "sft.trainable: ['wings'] unknown"),
    ("grpo.group_size", 1, "grpo.group_size: 1 must be an integer >= 2"),
    ("grpo.eval_every", True, "grpo.eval_every: True must be an integer >= 0"),
    ("grpo.reward", "vibes", "grpo.reward: 'vibes'; choose one of"),
    ("data.history_len", 0, "data.history_len: 0 must be an integer >= 1"),
    ("mesh.data", -1, "mesh: at most one axis may be -1"),
    ("model.dtype", "int8", "model.dtype: 'int8'; choose one of"),
    ("prompt.template", "no history", "prompt.template: must contain {history}"),
    ("eval.sasrec.depth", 3, "eval.sasrec:"),
    ("fetch.janus.revision", "", "fetch.janus: revision empty"),
    ("stages", ("prepare", "dance"), "stages: unknown stage 'dance'"),
])
def test_a_bad_key_or_value_is_named(path, value, message):
  with pytest.raises(ConfigError) as e:
    from_config(broken(path, value))
  assert message in str(e.value)
