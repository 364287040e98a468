"""Fields every experiment config has; the files beside this one set what differs."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stages = ("prepare", "sft", "grpo", "eval", "export")
  c.workdir = "runs/default"
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "janus-pro-1b"      # architecture when no checkpoint is given
  c.model.checkpoint = ""              # HF (transformers or deepseek) or pgen_jax directory
  c.model.dtype = "bfloat16"           # compute
  c.model.param_dtype = "float32"      # master weights

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: all remaining devices

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"
  c.data.root = ""
  c.data.history_len = 5               # k-1 history items before the target
  c.data.future_len = 3                # p future items used by rewards and metrics

  c.export = ml_collections.ConfigDict(dict(dir=""))
  return c
