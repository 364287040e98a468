"""The eval stage: generate for the test windows and measure the generated images.

The model is the newest training result (<workdir>/grpo/final, else <workdir>/sft/final), else the
configured one. Windows: the test split in order, of users held out of training when
data.holdout_users is set, at most eval.per_user per user and eval.windows in all (0: no limit).
Each window gets eval.samples images with CFG. Per image:
  clip_history, clip_target, clip_future   100 x cosine of CLIP image embeddings (grpo.clip)
  dino_history, dino_target, dino_future   the same with DINO (grpo.dino)
  ssim_target                              SSIM to the target item's image
  genre_hit                                synthetic world only: the token genre probe agrees with the
                                           user's preferred genre (pgen_jax.eval.genre)
  pixel_genre_hit                          synthetic world only: the same from the decoded pixels
                                           (colour and stripe direction, synthetic.pixel_genre)
Over the run, cross_user_similarity: the mean cosine similarity of images generated for different
users (CLIP embeddings, else pixels); lower means more personal images.

Writes <workdir>/eval/ at once when done (a killed run leaves nothing): metrics.json (mean, std and
count of each metric, and where the model came from), samples.jsonl (one row per image: window,
sample, user, item ids, its file and metrics), images/ (NNNNN_target.png, NNNNN_sK.png), a grid of
the first windows (grids/, history | samples | target) and tb/.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

from pgen_jax.data.pipeline import loader_from_config, source_from_config
from pgen_jax.eval.grids import png_bytes, save_grid
from pgen_jax.fileio import atomic_directory
from pgen_jax.sampling import Sampler, SamplingConfig
from pgen_jax.train.hacking import cross_user_similarity
from pgen_jax.train.setup import (Prompter, mesh_from_config, model_from_config, prompt_batch,
                                  trained_checkpoint)

SIMILARITIES = ("clip_history", "clip_target", "clip_future", "dino_history", "dino_target", "dino_future")


def eval_dir(cfg) -> Path:
  return Path(cfg.workdir) / "eval"


def test_windows(cfg, batch_size: int, per_user: int, limit: int = 0, with_future: bool = True):
  """Batches of test windows (see the module doc for which), the last one possibly smaller."""
  held_out = None
  if cfg.data.holdout_users:
    train_users = source_from_config(cfg, "train", with_future=False).users()
    held_out = lambda u: u not in train_users
  seen, taken = {}, 0
  for b in loader_from_config(cfg, "test", batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
                              with_future=with_future, workers=0, drop_remainder=False):
    b = {k: np.array(v) for k, v in b.items()}
    keep = []
    for u in map(int, b["user"]):
      ok = (held_out is None or held_out(u)) and seen.get(u, 0) < per_user and (not limit or taken < limit)
      seen[u] = seen.get(u, 0) + ok
      taken += ok
      keep.append(ok)
    if any(keep):
      yield {k: v[np.array(keep)] for k, v in b.items()}
    if limit and taken >= limit:
      return


def run_eval(cfg) -> dict:
  out, e = eval_dir(cfg), cfg.eval
  if out.exists():
    logging.info("eval already done: %s", out)
    return json.loads((out / "metrics.json").read_text())
  if jax.process_count() > 1:  # every host would write the same directory; gathering is not built yet
    raise ValueError("eval: runs on one host only for now; run it with a single process")
  from pgen_jax.rewards.models import load_reward_models
  mesh = mesh_from_config(cfg)
  source = trained_checkpoint(cfg)
  model = model_from_config(cfg, mesh, source)
  prompter = Prompter(cfg, model.config)
  models = load_reward_models(cfg.grpo, mesh, jnp.dtype(cfg.model.dtype))
  with_future = cfg.data.future_len > 0
  names = [n for n in SIMILARITIES if (models.clip if n.startswith("clip") else models.dino) is not None
           and (with_future or not n.endswith("future"))] + ["ssim_target"]
  terms_fn = models.terms_fn(models.config(((n, 1.0) for n in names), normalize="none"))
  classifier = None
  if cfg.data.name == "synthetic":
    from pgen_jax.data import synthetic
    from pgen_jax.eval.genre import fit_classifier
    classifier, _ = fit_classifier(cfg, model)
  sampler = Sampler(model, mesh, SamplingConfig(cfg_weight=e.cfg_weight, temperature=e.temperature,
                                                num_samples=e.samples, decode_images=True))
  rows, embeddings, users, grid = [], [], [], None
  with atomic_directory(out) as tmp:
    (tmp / "images").mkdir()
    for b in test_windows(cfg, e.batch_size, e.per_user, e.windows, with_future):
      x = prompter(b)
      roll = sampler(prompt_batch(x, cfg.prompt.uncond), jax.random.fold_in(jax.random.key(e.seed), len(rows)))
      images, tokens = np.asarray(roll.images), np.asarray(roll.tokens)
      rep = lambda a: np.repeat(a, e.samples, axis=0)
      data = {"generated": images, "history": rep(b["history"]), "target": rep(b["target"])}
      if with_future:
        data["future"] = rep(b["future"])
      terms = terms_fn(data)
      if classifier is not None:
        want = rep([synthetic.GENRES.index(synthetic.preferred_genre(int(u))) for u in b["user"]])
        terms["genre_hit"] = (classifier(tokens) == want).astype(np.float32)
        terms["pixel_genre_hit"] = (synthetic.pixel_genre(images) == want).astype(np.float32)
      if grid is None:
        grid = (b["history"][:4], images[:4 * e.samples], b["target"][:4])
      embeddings.append(models.embeddings(images))
      users.append(rep(b["user"]))
      for i in range(len(b["user"])):
        window = len(rows) // e.samples
        (tmp / "images" / f"{window:05d}_target.png").write_bytes(png_bytes(b["target"][i]))
        for k in range(e.samples):
          j = i * e.samples + k
          name = f"images/{window:05d}_s{k}.png"
          (tmp / name).write_bytes(png_bytes(images[j]))
          rows.append({"window": window, "sample": k, "user": int(b["user"][i]),
                       "item_ids": [int(t) for t in b["item_ids"][i]], "file": name,
                       **{t: float(v[j]) for t, v in terms.items()}})
      logging.info("eval: %d windows, %d images", len(rows) // e.samples, len(rows))
    if not rows:
      raise ValueError("eval: no test windows to evaluate; check data.test_windows and data.holdout_users")
    metrics = {t: {"mean": float(np.mean([r[t] for r in rows])), "std": float(np.std([r[t] for r in rows])),
                   "n": len(rows)} for t in rows[0] if t not in ("window", "sample", "user", "item_ids", "file")}
    metrics["cross_user_similarity"] = float(cross_user_similarity(jnp.asarray(np.concatenate(embeddings)),
                                                                   jnp.asarray(np.concatenate(users))))
    result = {"model": str(source or cfg.model.checkpoint or f"random {cfg.model.preset}"),
              "windows": len(rows) // e.samples, "samples_per_window": e.samples, "metrics": metrics}
    if classifier is not None:
      result["genre_chance"] = 1 / len(synthetic.GENRES)
    (tmp / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "metrics.json").write_text(json.dumps(result, indent=2))
    writer = metric_writers.create_default_writer(str(tmp / "tb"), just_logging=jax.process_index() > 0)
    save_grid(*grid, tmp, 0, writer)
    writer.write_scalars(0, {f"eval/{k}": v["mean"] if isinstance(v, dict) else v for k, v in metrics.items()})
    writer.close()
  return result
