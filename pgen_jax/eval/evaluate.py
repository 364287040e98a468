"""The eval stage: the paper's comparison of generated and retrieved images on the same test windows.

Windows: the test split in order, of users held out of training when data.holdout_users is set, at most
eval.per_user per user and eval.windows in all (0: no limit). Rows (methods):
  recommenders (eval.recommenders): Random, Pop, ItemKNN, LastItem, SASRec, fitted on the training
    windows; each window's images are its top eval.samples items' (LastItem: the last item, then its
    nearest); HR/NDCG@K of the ranked list (history excluded) against the target.
  generators (eval.generators): zero_shot (the configured model), sft (<workdir>/sft/final), grpo
    (<workdir>/grpo/final), when present; eval.samples CFG samples per window; ranked lists by
    generate-then-ground (each sample a CLIP query over the catalog, history excluded; the best
    similarity over the samples ranks an item).
Every row's N images per window go through pgen_jax.eval.metrics (one code for all rows) and are
summarised by pgen_jax.eval.stats (single-sample mean, best of N, paired 95% bootstrap intervals).

Writes <workdir>/eval/: methods/<name>/ per method, each written atomically when that method is done
(a killed eval redoes only the missing ones): values.npz (W x N per metric), method.json (ranking
figures, where the model came from), images/ (the first eval.report_users windows' images);
windows.json (users and item ids of the windows), windows/ (the report users' history, target and
future images); then results.json, results.md and report.html
(pgen_jax.eval.report).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from pgen_jax.data import synthetic
from pgen_jax.data.genre_probe import fit_classifier, image_tokens
from pgen_jax.data.pipeline import spec_from_config, test_window_batches
from pgen_jax.eval import metrics as M
from pgen_jax.eval.catalog import Catalog, EvalWindows
from pgen_jax.eval.measure import MetricModels, metric_model_section
from pgen_jax.eval.report import write_results
from pgen_jax.fileio import atomic_directory, tree_digest, write_json
from pgen_jax.models.janus import from_uint8
from pgen_jax.recommenders.baselines import popularity
from pgen_jax.recommenders.build import make, training_windows
from pgen_jax.recommenders.ranking import ranking_metrics, top_k
from pgen_jax.rewards.hf import load_clip_tokenizer
from pgen_jax.rewards.models import load_reward_models
from pgen_jax.rewards.similarity import unit
from pgen_jax.sampling import Sampler, SamplingConfig, per_sample
from pgen_jax.sampling.prompter import Prompter, prompt_batch
from pgen_jax.scorer.client import profile_text
from pgen_jax.scorer.launch import scorer_client
from pgen_jax.setup import mesh_from_config, model_from_config, tokenizer_dir, trained_checkpoint
from pgen_jax.viz import png_bytes

GENERATORS = ("zero_shot", "sft", "grpo")


def eval_dir(cfg) -> Path:
  return Path(cfg.workdir) / "eval"


class Progress:
  """Logs done/total with the rate and an ETA."""

  def __init__(self, what: str, total: int):
    self.what, self.total, self.start = what, total, time.time()

  def __call__(self, done: int):
    spent = time.time() - self.start
    eta = spent / max(done, 1) * (self.total - done)
    logging.info("eval %s: %d/%d windows, %.1f windows/s, ETA %.0fs", self.what, done, self.total,
                 done / max(spent, 1e-9), eta)


class Comparison:
  """What every method shares: windows, catalog, metric models, the genre probe."""

  def __init__(self, cfg, mesh):
    self.cfg, self.eval_cfg, self.mesh = cfg, cfg.eval, mesh
    self.catalog = Catalog(cfg)
    users, ids = [], []
    for b in test_window_batches(cfg, 64, self.eval_cfg.per_user, self.eval_cfg.windows, cfg.data.future_len > 0):
      users.append(b["user"])
      ids.append(b["item_ids"])
    if not users:
      raise ValueError("eval: no test windows to evaluate; check data.test_windows and data.holdout_users")
    self.windows = EvalWindows(np.concatenate(users), self.catalog.index(np.concatenate(ids)), cfg.data.history_len)
    section = metric_model_section(cfg)
    tokenizer = load_clip_tokenizer(section.clip) if section.clip and not section.clip.startswith("random:") else None
    self.models = MetricModels(load_reward_models(section, mesh, np.float32), tokenizer=tokenizer)
    self.genre = None
    if cfg.data.name == "synthetic":
      self.genre = _GenreProbe(cfg, mesh)
    w = self.windows
    self.refs = {}
    for kind, fn, ok in (("cis", self.models.clip, self.models.has_clip),
                         ("dis", self.models.dino, self.models.has_dino)):
      if ok:
        self.refs[kind] = (self.catalog.embeddings(kind, fn, w.history), self.catalog.embeddings(kind, fn, w.target),
                           self.catalog.embeddings(kind, fn, w.future))
    self.target_images = self.catalog.images(w.target)
    # cts: the target item's text (title | genres) as CLIP sees it, when the CLIP directory has its tokenizer
    self.target_text = self.models.text(self.catalog.texts(w.target)) if self.models.has_text else None
    # nima / profile from the scorer; the judge reads each window's history as a profile
    self.scorer_terms = list(self.eval_cfg.scorer_terms)
    self.scorer = scorer_client(cfg.reward_models, cfg.workdir) if self.scorer_terms else None
    self.profiles = np.array([profile_text(self.catalog.texts(h)) for h in w.history], dtype=object)

  def measure(self, images: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """images uint8 (W, N, S, S, 3) -> {metric: (W, N)}; `tokens` (W, N, T) the VQ tokens for the genre probe."""
    w, n = images.shape[:2]
    flat = images.reshape(w * n, *images.shape[2:])
    out = {}
    emb = {}
    if self.models.has_clip:
      emb["cis"] = self.models.clip(flat).reshape(w, n, -1)
    if self.models.has_dino:
      emb["dis"] = self.models.dino(flat).reshape(w, n, -1)
    for kind, g in emb.items():
      h, t, f = self.refs[kind]
      out.update(M.image_similarities(kind, g, h, t, f))
    if self.target_text is not None:
      out["cts"] = M.text_similarity(emb["cis"], self.target_text)
    out.update(self.models.pairs(images, self.target_images))  # each window's target once (its LPIPS features)
    if self.scorer is not None:
      out.update(self._scored(flat, per_sample(self.profiles, n), w, n))
    g = emb["cis"] if "cis" in emb else flat.reshape(w, n, -1).astype(np.float32)
    out["cross_user"] = M.cross_user(g, self.windows.users)
    if self.genre is not None:
      tokens = tokens.reshape(w * n, -1) if tokens is not None else self.genre.tokens(flat)
      out["genre_hit"] = self.genre(self.windows.users, tokens).reshape(w, n)
      out["pixel_genre_hit"] = self.genre.pixels(self.windows.users, flat).reshape(w, n)
      out["pixel_margin"] = synthetic.signature_margin(flat, per_sample(np.asarray(self.windows.users), n)
                                                       ).astype(np.float64).reshape(w, n)
    return out

  def _scored(self, flat, profiles, w: int, n: int, chunk: int = 64) -> dict[str, np.ndarray]:
    """The scorer's terms for each image, in requests of `chunk` images."""
    parts = [self.scorer.score(flat[i:i + chunk], self.scorer_terms,
                               list(profiles[i:i + chunk]) if "profile" in self.scorer_terms else None)
             for i in range(0, len(flat), chunk)]
    return {k: np.concatenate([p[k] for p in parts]).reshape(w, n).astype(np.float64) for k in self.scorer_terms}

  def ground(self, images: np.ndarray, k: int = 10) -> np.ndarray:
    """Generate-then-ground: (W, k) catalog items ranked by their best CLIP cosine to any of the window's
    N images (pixels without CLIP), the history excluded."""
    w, n = images.shape[:2]
    everything = np.arange(len(self.catalog))
    fn = self.models.clip if self.models.has_clip else (lambda x: x.reshape(len(x), -1).astype(np.float32))
    cat = unit(self.catalog.embeddings("cis" if self.models.has_clip else "pixels", fn, everything))
    q = unit(fn(images.reshape(w * n, *images.shape[2:]))).reshape(w, n, -1)
    scores = np.einsum("wnd,id->wni", q, cat).max(1)
    return top_k(scores, self.windows.history, k)


class _GenreProbe:
  """Synthetic world: the token genre classifier (pgen_jax.data.genre_probe) on an image's VQ tokens."""

  def __init__(self, cfg, mesh):
    self.vq_model = model_from_config(cfg, mesh)  # the VQ tokenizer is frozen: every checkpoint shares it
    self.clf, self.ceiling = fit_classifier(cfg, self.vq_model)

  def tokens(self, images: np.ndarray) -> np.ndarray:
    return image_tokens(self.vq_model, from_uint8(images))

  @staticmethod
  def wanted(users, n: int) -> np.ndarray:
    return per_sample(synthetic.preferred_index(users), n)

  def __call__(self, users, tokens) -> np.ndarray:
    want = self.wanted(users, len(tokens) // len(users))
    return (self.clf(np.asarray(tokens).reshape(len(want), -1)) == want).astype(np.float64)

  def pixels(self, users, images: np.ndarray) -> np.ndarray:
    """The same from the decoded pixels (colour and stripe direction, synthetic.pixel_genre): no model."""
    return (synthetic.pixel_genre(images) == self.wanted(users, len(images) // len(users))).astype(np.float64)


def setup_digest(cfg) -> str:
  """What a method's values depend on besides the method: the data, the windows, N, the metric models."""
  eval_cfg, models = cfg.eval, cfg.reward_models
  keys = {"data": spec_from_config(cfg).fingerprint(), "samples": eval_cfg.samples, "per_user": eval_cfg.per_user,
          "windows": eval_cfg.windows, "report_users": eval_cfg.report_users, "cfg_weight": eval_cfg.cfg_weight,
          "temperature": eval_cfg.temperature, "seed": eval_cfg.seed,
          "clip": eval_cfg.clip or models.clip, "dino": eval_cfg.dino or models.dino, "dino_size": models.dino_size,
          "lpips": [models.lpips_vgg, models.lpips_heads], "scorer_terms": list(eval_cfg.scorer_terms),
          "sasrec": dict(eval_cfg.sasrec), "seed_run": cfg.seed, "metrics": M.VERSION}
  return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_method(out: Path, name: str, kind: str, values: dict, info: dict, images: np.ndarray, report_users: int,
                 c_setup: str):
  with atomic_directory(out / "methods" / name) as tmp:
    np.savez(tmp / "values.npz", **values)
    (tmp / "images").mkdir()
    for w in range(min(report_users, len(images))):
      for k in range(images.shape[1]):
        (tmp / "images" / f"{w:05d}_s{k}.png").write_bytes(png_bytes(images[w, k]))
    (tmp / "method.json").write_text(json.dumps({"name": name, "kind": kind, "setup": c_setup, **info}, indent=2))


def run_recommender(comparison: Comparison, name: str, train, out: Path):
  eval_cfg, w = comparison.eval_cfg, comparison.windows
  rec = make(name, dict(eval_cfg.sasrec), comparison.cfg.seed, comparison.cfg.data.stride).fit(*train)
  k = max(10, eval_cfg.samples)
  ranked = top_k(rec.scores(w.history), w.history, k, popularity(*train))
  ranking = ranking_metrics(ranked, w.target, ks=(1, 10))
  shown = ranked[:, :eval_cfg.samples]
  if name == "lastitem":  # its one recommendation is the last item itself, then its neighbours
    shown = np.concatenate([w.history[:, -1:], ranked[:, :eval_cfg.samples - 1]], 1)
  logging.info("recommender %s on %d test windows: %s", name, len(w.users), ranking)
  images = comparison.catalog.images(shown)
  values = comparison.measure(images)
  _save_method(out, name, "recommender", values, {"ranking": ranking, "items": comparison.catalog.ids[shown].tolist()},
               images, eval_cfg.report_users, setup_digest(comparison.cfg))


def generator_sources(cfg) -> dict[str, str | None]:
  """name -> checkpoint of each configured generator that exists (zero_shot: the configured model)."""
  out = {}
  for name in cfg.eval.generators:
    if name not in GENERATORS:
      raise ValueError(f"eval.generators: {name!r} unknown; choose from {GENERATORS}")
    if name == "zero_shot":
      out[name] = cfg.model.checkpoint or None
    else:
      path = trained_checkpoint(cfg, (name,))
      if path is None:
        logging.info("eval: no %s result in %s; its row is left out", name, cfg.workdir)
      else:
        out[name] = str(path)
  return out


def generator_digest(cfg, source: str | None) -> str:
  """What a generator's row measured: its checkpoint's digest (fileio.tree_digest), or for a random
  initialisation its preset, seed and the vq stage's tokenizer it takes; retraining changes it."""
  if source:
    return tree_digest(source)
  vq = tokenizer_dir(cfg)
  return f"random {cfg.model.preset} seed {cfg.seed}, tokenizer " + (tree_digest(vq) if vq.exists() else "none")


def generator_sampling(eval_cfg) -> SamplingConfig:
  """How eval samples a generator: eval.samples images per test window, decoded for the metric models."""
  return SamplingConfig(cfg_weight=eval_cfg.cfg_weight, temperature=eval_cfg.temperature,
                        num_samples=eval_cfg.samples, decode_images=True)


def run_generator(comparison: Comparison, name: str, source, out: Path):
  cfg, eval_cfg = comparison.cfg, comparison.eval_cfg
  model = model_from_config(cfg, comparison.mesh, source)
  prompter = Prompter(cfg, model.config)
  sampler = Sampler(model, comparison.mesh, generator_sampling(eval_cfg))
  images, tokens, progress = [], [], Progress(name, len(comparison.windows.users))
  for b in test_window_batches(cfg, eval_cfg.batch_size, eval_cfg.per_user, eval_cfg.windows, with_future=False):
    key = jax.random.fold_in(jax.random.key(eval_cfg.seed), len(images))
    roll = sampler(prompt_batch(prompter(b), cfg.prompt.uncond), key)
    images.extend(np.asarray(roll.images).reshape(len(b["user"]), eval_cfg.samples, *roll.images.shape[1:]))
    tokens.extend(np.asarray(roll.tokens).reshape(len(b["user"]), eval_cfg.samples, -1))
    progress(len(images))
  images, tokens = np.stack(images), np.stack(tokens)
  values = comparison.measure(images, tokens)
  ranked = comparison.ground(images)
  ranking = ranking_metrics(ranked, comparison.windows.target, ks=(1, 10))
  logging.info("generator %s, generate-then-ground on %d test windows: %s", name, len(images), ranking)
  _save_method(out, name, "generator", values, {"ranking": ranking, "source": source or
                                                f"random {cfg.model.preset} (seed {cfg.seed})",
                                                "measured": generator_digest(cfg, source),
                                                "ground_embedding": "clip" if comparison.models.has_clip else "pixels"},
               images, eval_cfg.report_users, setup_digest(cfg))


def run_eval(cfg) -> dict:
  out, eval_cfg = eval_dir(cfg), cfg.eval
  if jax.process_count() > 1:  # every host would write the same directory; gathering is not built yet
    raise ValueError("eval: runs on one host only for now; run it with a single process")
  gens = generator_sources(cfg)
  methods = list(eval_cfg.recommenders) + list(gens)
  setup = setup_digest(cfg)
  measured = {m: generator_digest(cfg, source) for m, source in gens.items()}

  def done(m):
    f = out / "methods" / m / "method.json"
    if f.exists():
      row = json.loads(f.read_text())
      if row.get("setup") != setup:
        logging.warning("eval: %s was measured with other settings (windows, samples, metric models); redoing it", m)
        shutil.rmtree(f.parent)
      elif m in measured and row.get("measured") != measured[m]:
        logging.warning("eval: %s was measured on another checkpoint than %s; redoing it", m, gens[m] or "the random init")
        shutil.rmtree(f.parent)
    return f.exists()

  if (out / "results.json").exists() and all(done(m) for m in methods):
    logging.info("eval already done: %s", out)
    return json.loads((out / "results.json").read_text())
  comparison = Comparison(cfg, mesh_from_config(cfg))
  out.mkdir(parents=True, exist_ok=True)
  old = json.loads((out / "windows.json").read_text()).get("setup") if (out / "windows.json").exists() else None
  if old != setup:
    shutil.rmtree(out / "windows", ignore_errors=True)
  w = comparison.windows
  write_json(out / "windows.json", {"users": w.users.tolist(), "items": comparison.catalog.ids[w.items].tolist(),
                                    "history_len": w.history_len, "setup": setup})
  if not (out / "windows").exists():  # the report users' items, as the metrics saw them
    with atomic_directory(out / "windows") as tmp:
      for i in range(min(eval_cfg.report_users, len(w.users))):
        for tag, idx in [(f"h{j}", w.history[i, j]) for j in range(w.history.shape[1])] + [("target", w.target[i])] + \
                        [(f"f{j}", w.future[i, j]) for j in range(w.future.shape[1])]:
          (tmp / f"{i:05d}_{tag}.png").write_bytes(png_bytes(comparison.catalog.images(np.array([idx]))[0]))
  train = None
  for m in methods:
    if done(m):
      logging.info("eval: %s already measured", m)
      continue
    if m in gens:
      run_generator(comparison, m, gens[m], out)
    else:
      train = train or training_windows(cfg)
      run_recommender(comparison, m, train, out)
  extra = {}
  if comparison.genre:
    extra = {"genre_chance": 1 / len(synthetic.GENRES), "genre_classifier_accuracy": comparison.genre.ceiling}
  return write_results(cfg, out, methods, comparison, extra)
