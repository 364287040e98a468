"""Typed config sections: a frozen dataclass per config section, made from the ConfigDict once, by `main`.

A section's module owns it and its checks (`check()`); the helpers here make the checks one line each and
their messages alike ("sft.lr: 0.0 must be > 0"). Unknown keys and non-finite floats are refused while the
section is made, naming the key (and the closest known one).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, ClassVar

from pgen_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Section:
  """Base of the typed sections; `where` is the section's dotted name in the config."""
  where: ClassVar[str] = ""

  def check(self) -> None:
    """The section's own checks (subclasses); raise ConfigError naming the key."""

  def key(self, name: str) -> str:
    return f"{self.where}.{name}" if self.where else name


def make(cls: type, node, where: str | None = None):
  """`cls` from a mapping (ConfigDict, dict): nested sections and dicts of their own, tuples for lists."""
  where = cls.where if where is None else where
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  values = {}
  dotted = (lambda name: f"{where}.{name}") if where else (lambda name: name)
  for name, value in dict(node).items():
    if name not in fields:
      close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.0)
      hint = f"; the closest is {dotted(close[0])}" if close else ""
      raise ConfigError(f"{dotted(name)}: no such key{hint}")
    values[name] = _value(typing.get_type_hints(cls)[name], value, dotted(name))
  try:
    section = cls(**values)
  except TypeError as e:  # a key the section needs and the config lacks
    raise ConfigError(f"{where}: {e}") from None
  section.check()
  return section


def _value(kind, value, key: str):
  if isinstance(kind, type) and issubclass(kind, Section):
    return make(kind, value, key)
  if hasattr(value, "items"):
    value = dict(value)
    for k, v in value.items():
      _finite(v, f"{key}.{k}")
    return value
  if isinstance(value, list):
    value = tuple(value)
  _finite(value, key)
  return value


def _finite(value, key: str) -> None:
  if isinstance(value, float) and not math.isfinite(value):
    raise ConfigError(f"{key}: {value!r}; must be a finite number")


def at_least(section: Section, low: int, *names: str) -> None:
  """Each field is an integer >= low."""
  for name in names:
    value = getattr(section, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ConfigError(f"{section.key(name)}: {value!r} must be an integer >= {low}")


def positive(section: Section, *names: str) -> None:
  """Each field is a number > 0."""
  for name in names:
    value = getattr(section, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      raise ConfigError(f"{section.key(name)}: {value!r} must be a number > 0")


def one_of(section: Section, name: str, choices) -> None:
  value = getattr(section, name)
  if value not in choices:
    raise ConfigError(f"{section.key(name)}: {value!r}; choose one of {tuple(choices)}")


def all_in(section: Section, name: str, choices, *, empty_ok: bool = True) -> None:
  """A tuple field whose every element is one of `choices`."""
  value: Any = getattr(section, name)
  bad = [v for v in value if v not in choices]
  if bad or (not value and not empty_ok):
    raise ConfigError(f"{section.key(name)}: {bad or 'empty'} unknown; choose from {tuple(choices)}")
