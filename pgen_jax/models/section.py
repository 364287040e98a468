"""The model and mesh sections of the config: which Janus to build, in which dtypes, on which mesh."""

from __future__ import annotations

import dataclasses

from pgen_jax.errors import ConfigError
from pgen_jax.models.attention import IMPLS
from pgen_jax.models.config import PRESETS
from pgen_jax.models.lora import LoraConfig
from pgen_jax.models.quant import QTYPES
from pgen_jax.sections import Section, at_least, one_of

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LoraSection(Section):
  where = "model.lora"
  rank: int               # 0: no adapters (full fine-tuning as sft.trainable says)
  alpha: float            # the update is scaled by alpha / rank
  target: str             # regex of the Janus module paths adapted (pgen_jax.models.lora)
  base_qtype: str         # the frozen base of the adapted projections: none | int8 | nf4 (QLoRA)

  def check(self) -> None:
    at_least(self, 0, "rank")
    one_of(self, "base_qtype", QTYPES)
    if self.base_qtype != "none" and not self.rank:
      raise ConfigError(f"model.lora.base_qtype={self.base_qtype!r} quantises the base under adapters: set "
                        "model.lora.rank > 0, or base_qtype='none'")
    if self.rank:
      self.config()

  def config(self) -> LoraConfig | None:
    """The validated LoraConfig, or None when rank is 0."""
    return LoraConfig(self.rank, float(self.alpha), self.target).validate() if self.rank else None


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
  where = "model"
  preset: str             # the architecture when no checkpoint is given
  checkpoint: str         # HF (transformers or deepseek) or pgen_jax directory
  dtype: str              # compute
  param_dtype: str        # master weights
  tokenizer: str          # "": the checkpoint's own; "bytes": byte-level, for tiny models
  attention: str          # pgen_jax.models.attention.IMPLS
  lora: LoraSection       # adapters for the training stages

  def check(self) -> None:
    one_of(self, "preset", sorted(PRESETS))
    one_of(self, "dtype", DTYPES)
    one_of(self, "param_dtype", DTYPES)
    one_of(self, "attention", IMPLS)


@dataclasses.dataclass(frozen=True)
class MeshSection(Section):
  where = "mesh"
  data: int
  fsdp: int
  tensor: int

  def check(self) -> None:
    sizes = dataclasses.asdict(self)
    for axis, n in sizes.items():
      if isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != -1):
        raise ConfigError(f"mesh.{axis}: {n!r}; use a positive device count or -1 for 'the rest'")
    if list(sizes.values()).count(-1) > 1:
      raise ConfigError("mesh: at most one axis may be -1")
