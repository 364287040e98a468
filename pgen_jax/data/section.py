"""The data section of the config: which dataset, where, and how its histories are cut into windows."""

from __future__ import annotations

import dataclasses

from pgen_jax.errors import ConfigError
from pgen_jax.sections import Section, at_least, one_of

DATASETS = ("synthetic", "movielens", "pixelrec")


@dataclasses.dataclass(frozen=True)
class DataSection(Section):
  where = "data"
  name: str
  root: str
  version: str
  images: str
  store: str
  image_size: int
  history_len: int
  future_len: int
  stride: int
  min_rating: float
  test_windows: int
  val_windows: int
  holdout_users: int
  workers: int
  cache_mb: int

  def check(self) -> None:
    one_of(self, "name", DATASETS)
    if self.name == "synthetic" and not self.root:
      raise ConfigError("data.root: empty; set where the synthetic world is written")
    at_least(self, 1, "history_len", "stride")
    at_least(self, 0, "future_len", "test_windows", "val_windows", "holdout_users", "workers", "cache_mb")
    at_least(self, 16, "image_size")
