"""The prompt section of the config: how a history becomes a prompt, and its CFG row."""

from __future__ import annotations

import dataclasses

from pgen_jax.errors import ConfigError
from pgen_jax.sections import Section, at_least, one_of


@dataclasses.dataclass(frozen=True)
class PromptSection(Section):
  where = "prompt"
  template: str           # holds {history}
  item: str               # one history item: {image} and {text}
  max_text_tokens: int    # item texts are cut to this many tokens
  uncond: str             # CFG's unconditional row: official | keep_images
  uncond_pads: str        # the row's blanked tokens: attend (as HF) | drop

  def check(self) -> None:
    if "{history}" not in self.template:
      raise ConfigError("prompt.template: must contain {history}")
    one_of(self, "uncond", ("official", "keep_images"))
    one_of(self, "uncond_pads", ("drop", "attend"))
    at_least(self, 0, "max_text_tokens")
