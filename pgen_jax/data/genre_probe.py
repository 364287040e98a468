"""The synthetic world's probe: do images generated for a user carry that user's preferred genre?

A naive-Bayes classifier over VQ tokens (bag of tokens, Laplace smoothing) is fitted on the tokens
of every item's poster, labelled by the item's genre; each generated sample is classified and counts
as a hit when the class is the user's preferred genre. Chance is 1 / number of genres. The decoded images also get the pixel-level probe
(synthetic.pixel_probe), which reads colour and stripe direction and needs no model. Evaluated on
the test windows of users never seen in training (data.holdout_users), or all test windows if none.
Used by SFT (the hit rate after training), GRPO (grpo.reward=genre) and eval (genre_hit).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from pgen_jax.data import synthetic
from pgen_jax.data.pipeline import spec_from_config, store_dir, test_window_batches
from pgen_jax.data.store import builders
from pgen_jax.models.janus import from_uint8, map_chunks
from pgen_jax.sampling import Sampler, SamplingConfig, per_sample
from pgen_jax.sampling.prompter import prompt_batch


class TokenGenreClassifier:
  def __init__(self, tokens: np.ndarray, labels: np.ndarray, vocab: int, classes: int):
    counts = np.ones((classes, vocab))
    for t, k in zip(tokens, labels):
      np.add.at(counts[k], t, 1)
    self.log_p = np.log(counts / counts.sum(1, keepdims=True))

  def __call__(self, tokens: np.ndarray) -> np.ndarray:
    return np.array([self.log_p[:, t].sum(1).argmax() for t in tokens])


@nnx.jit
def _tokens(model, x):
  return model.get_image_tokens(x)


def image_tokens(model, images: np.ndarray, chunk: int = 64) -> np.ndarray:
  """VQ ids of images in [-1, 1], jitted over fixed chunks (one shape compiles)."""
  return map_chunks(lambda x: _tokens(model, x), images, chunk)


def fit_classifier(cfg, model) -> tuple[TokenGenreClassifier, float]:
  """The classifier and its leave-nothing-out accuracy on the real posters (its ceiling)."""
  items, _ = builders(spec_from_config(cfg), store_dir(cfg))
  source = items.as_data_source(split="items")
  world = synthetic.WorldConfig()
  rows = [source[i] for i in range(len(source))]
  labels = np.array([synthetic.GENRES.index(synthetic.genre_of_movie(int(r["item_id"]), world)) for r in rows])
  imgs = from_uint8(np.stack([r["target"] for r in rows]))
  tokens = image_tokens(model, imgs)
  clf = TokenGenreClassifier(tokens, labels, model.config.vq.num_embeddings, len(synthetic.GENRES))
  return clf, float((clf(tokens) == labels).mean())


def genre_hit_rate(cfg, model, mesh, prompter, *, samples: int = 4, per_user: int = 4) -> dict:
  """Hit rate over `samples` images for each of the first `per_user` test windows of every user."""
  clf, ceiling = fit_classifier(cfg, model)
  sampler = Sampler(model, mesh, SamplingConfig(cfg_weight=cfg.sft.cfg_weight, num_samples=samples))
  hits, total, users, images, image_users = 0, 0, set(), [], []
  for b in test_window_batches(cfg, 8, per_user, with_future=False):
    roll = sampler(prompt_batch(prompter(b), cfg.prompt.uncond), jax.random.key(total))
    tokens = np.asarray(roll.tokens)
    images.append(np.asarray(roll.images))
    image_users.append(per_sample(b["user"], samples))
    want = per_sample(synthetic.preferred_index(b["user"]), samples)
    hits += int((clf(tokens) == want).sum())
    total += len(tokens)
    users.update(map(int, b["user"]))
  return {"hit_rate": hits / max(total, 1), "samples": total, "users": len(users),
          "chance": 1 / len(synthetic.GENRES), "classifier_accuracy_on_posters": ceiling,
          "pixel": synthetic.pixel_probe(np.concatenate(images), np.concatenate(image_users))}
