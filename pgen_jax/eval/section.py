"""The eval section of the config: which recommenders and generators are compared, on which windows."""

from __future__ import annotations

import dataclasses

from pgen_jax.errors import ConfigError
from pgen_jax.eval.evaluate import GENERATORS
from pgen_jax.recommenders.build import NAMES
from pgen_jax.recommenders.sasrec import SASRecConfig
from pgen_jax.sections import Section, all_in, at_least


@dataclasses.dataclass(frozen=True)
class EvalSection(Section):
  where = "eval"
  clip: str               # metric CLIP; "": reward_models.clip (the optimised reward, with a warning)
  dino: str               # metric DINO; "": reward_models.dino
  scorer_terms: tuple     # nima, profile: per image from the scorer
  recommenders: tuple
  generators: tuple
  sasrec: dict            # recommenders.sasrec.SASRecConfig's fields
  bootstrap: int          # resamples of the windows for the 95% intervals
  report_users: int
  samples: int            # images per test window
  per_user: int
  windows: int            # at most this many windows in all; 0: every selected one
  batch_size: int
  cfg_weight: float
  temperature: float
  seed: int

  def check(self) -> None:
    all_in(self, "recommenders", NAMES)
    all_in(self, "generators", GENERATORS)
    all_in(self, "scorer_terms", ("nima", "profile"))
    at_least(self, 1, "samples", "per_user", "batch_size", "bootstrap")
    at_least(self, 0, "windows", "report_users")
    try:
      SASRecConfig(**self.sasrec)
    except TypeError as e:
      raise ConfigError(f"eval.sasrec: {e}") from None
