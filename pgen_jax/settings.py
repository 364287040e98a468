"""The whole config, typed: the job's top-level keys and one section per concern, made once by `main` from
the ConfigDict; each section is checked by the module that owns it."""

from __future__ import annotations

import dataclasses

from pgen_jax.data.section import DataSection
from pgen_jax.errors import ConfigError
from pgen_jax.eval.section import EvalSection
from pgen_jax.fetch.section import FetchSection
from pgen_jax.models.section import MeshSection, ModelSection
from pgen_jax.rewards.section import RewardModelsSection
from pgen_jax.sampling.section import PromptSection
from pgen_jax.sections import Section, make
from pgen_jax.train.sections import GRPOSection, SFTSection, VQSection

STAGES = ("fetch", "prepare", "vq", "sft", "grpo", "eval", "export")


@dataclasses.dataclass(frozen=True)
class ExportSection(Section):
  where = "export"
  dir: str                # where the HF checkpoint is written


@dataclasses.dataclass(frozen=True)
class Settings(Section):
  stages: tuple
  workdir: str
  seed: int
  compile_cache: str      # XLA programs kept across runs; "": off
  model: ModelSection
  mesh: MeshSection
  data: DataSection
  prompt: PromptSection
  vq: VQSection
  sft: SFTSection
  grpo: GRPOSection
  reward_models: RewardModelsSection
  eval: EvalSection
  export: ExportSection
  fetch: FetchSection

  def check(self) -> None:
    if not self.stages:
      raise ConfigError("stages: empty; name at least one of " + ", ".join(STAGES))
    for s in self.stages:
      if s not in STAGES:
        raise ConfigError(f"stages: unknown stage {s!r}; known: {', '.join(STAGES)}")
    if not self.workdir:
      raise ConfigError("workdir: empty; set where runs write checkpoints and logs")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int):
      raise ConfigError("seed: must be an integer")
    if "export" in self.stages and not self.export.dir:
      raise ConfigError("export.dir: empty; set where the HF checkpoint is written")


def from_config(cfg) -> Settings:
  """The typed settings of a ConfigDict (or dict); ConfigError names an unknown or bad key."""
  return make(Settings, cfg, "")
