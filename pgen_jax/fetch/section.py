"""The fetch section of the config: where each download comes from, pinned to a revision."""

from __future__ import annotations

import dataclasses

from pgen_jax.errors import ConfigError
from pgen_jax.sections import Section, positive

REPOS = ("janus", "clip", "dino", "qwen", "nima")


@dataclasses.dataclass(frozen=True)
class Repo(Section):
  """One Hub repository at a pinned commit: the files matching `allow`, or the one `file`."""
  repo: str
  revision: str
  allow: tuple = ()
  file: str = ""


@dataclasses.dataclass(frozen=True)
class FetchSection(Section):
  where = "fetch"
  hf_endpoint: str        # "": $HF_ENDPOINT, else https://huggingface.co
  janus: Repo
  clip: Repo
  dino: Repo
  qwen: Repo
  nima: Repo
  movielens_url: str
  movielens_md5: str
  posters: str            # tmdb, or a folder of <movieId>.jpg
  tmdb_api: str
  tmdb_images: str
  lock_timeout: float     # seconds to wait for another process fetching the same thing

  def check(self) -> None:
    for name in REPOS:
      repo = getattr(self, name)
      missing = [k for k in ("repo", "revision") if not getattr(repo, k)]
      if missing:
        raise ConfigError(f"fetch.{name}: {', '.join(missing)} empty; name the Hub repository and its commit")
    positive(self, "lock_timeout")
