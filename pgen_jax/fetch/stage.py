"""The fetch stage: for each path the config's stages need and that is missing, download it.

  model.checkpoint  <- fetch.janus   (when a model stage runs: sft, grpo, eval, export)
  reward_models.clip/dino    <- fetch.clip / fetch.dino   (grpo or eval; random:* presets need nothing)
  reward_models.scorer_qwen  <- fetch.qwen    (grpo with reward_weights.profile > 0)
  reward_models.scorer_nima  <- fetch.nima    (grpo with reward_weights.nima > 0)
  data.root         <- the MovieLens release data.version
  posters           <- fetch.posters: a folder to use, or "tmdb" (ml-1m has no links.csv: its ids are
                       MovieLens ids, so ml-latest-small's links.csv maps most of them)
Paths that exist are left alone (a no-op rerun needs no network).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pgen_jax.errors import FetchError
from pgen_jax.fetch import archive, hub

MODEL_STAGES = ("sft", "grpo", "eval", "export")


def plan(cfg) -> list[tuple[str, str, Path]]:
  """[(what, config key, destination)] of what the config needs and lacks."""
  stages = tuple(cfg.stages)
  out = []

  def want(what, key, path):
    if path and not str(path).startswith("random:") and not Path(path).exists():
      out.append((what, key, Path(path)))

  if any(s in stages for s in MODEL_STAGES):
    want("janus", "model.checkpoint", cfg.model.checkpoint)
  if "grpo" in stages or "eval" in stages:
    want("clip", "reward_models.clip", cfg.reward_models.clip)
    want("dino", "reward_models.dino", cfg.reward_models.dino)
  if "grpo" in stages and cfg.grpo.reward == "models":
    weights = cfg.grpo.reward_weights
    if weights.get("profile", 0):
      want("qwen", "reward_models.scorer_qwen", cfg.reward_models.scorer_qwen)
    if weights.get("nima", 0):
      want("nima", "reward_models.scorer_nima", cfg.reward_models.scorer_nima)
  if cfg.data.name == "movielens" and any(s in stages for s in ("prepare", "sft", "grpo", "eval")):
    want("movielens", "data.root", cfg.data.root)
    images = Path(cfg.data.images or Path(cfg.data.root) / "posters")
    if not images.exists():
      out.append(("posters", "data.images", images))
  return out


def fetch_from_config(cfg) -> dict:
  """Downloads what `plan` lists; returns {config key: destination}."""
  fetch_cfg, done = cfg.fetch, {}
  todo = plan(cfg)
  if not todo:
    logging.info("fetch: everything the config names is present")
  for what, key, dest in todo:
    if what == "movielens":
      if not cfg.data.version:
        raise FetchError(f"data.root: {dest} does not exist and data.version is empty; set data.version "
                         f"(one of {archive.VERSIONS}) to download it, or put the MovieLens files there")
      archive.fetch_movielens(cfg.data.version, dest, base_url=fetch_cfg.movielens_url,
                              checksum=fetch_cfg.movielens_md5)
    elif what == "posters":
      _posters(cfg, dest)
    elif what == "nima":
      hub.download_file(fetch_cfg.nima.repo, fetch_cfg.nima.revision, fetch_cfg.nima.file, dest,
                        hf_endpoint=fetch_cfg.hf_endpoint)
    else:
      spec = getattr(fetch_cfg, what)
      hub.download_repo(spec.repo, spec.revision, dest, allow=list(spec.allow), hf_endpoint=fetch_cfg.hf_endpoint,
                        lock_timeout=fetch_cfg.lock_timeout)
    done[key] = str(dest)
  return done


def _posters(cfg, dest: Path) -> None:
  source = cfg.fetch.posters
  if source != "tmdb":
    if not Path(source).is_dir():
      raise FetchError(f"fetch.posters: {source!r} is not a folder of <movieId>.jpg; name one, or set it to "
                       "'tmdb' with TMDB_API_KEY set")
    os.symlink(Path(source).resolve(), dest, target_is_directory=True)
    return
  from pgen_jax.data import tmdb  # lazy: tmdb defines its command line's absl flags when imported
  key = os.environ.get("TMDB_API_KEY", "")
  if not key:
    raise FetchError(f"{dest}: no posters; set TMDB_API_KEY to fetch them from TMDB, or "
                     "--config.fetch.posters=<folder of <movieId>.jpg>")
  root = Path(cfg.data.root)
  links = root / "links.csv"
  if not links.exists():  # ml-1m: MovieLens ids are stable across releases
    small = root.parent / "ml-latest-small"
    archive.fetch_movielens("ml-latest-small", small, base_url=cfg.fetch.movielens_url)
    links = small / "links.csv"
  client = tmdb.Client(key, api=cfg.fetch.tmdb_api, images=cfg.fetch.tmdb_images)
  counts = tmdb.fetch(links, dest, client)
  if not counts.get("ok"):
    raise FetchError(f"{cfg.fetch.tmdb_api}: no poster could be fetched ({counts}); see {dest}/manifest.json")
