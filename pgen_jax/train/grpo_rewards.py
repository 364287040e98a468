"""The GRPO stage's rewards (grpo.reward), one rollout at a time:

  models  the weighted sum of the raw terms of pgen_jax.rewards.compose (CLIP/DINO/LPIPS/SSIM in jit,
          from reward_models.clip / reward_models.dino / reward_models.lpips_vgg + reward_models.lpips_heads, plus the scorer's
          profile/nima from reward_models.scorer_url, scored in the background); each term's scale is in
          compose's docstring. grpo.reward_normalize=running divides the terms by their running
          within-group spread for the advantages only; the logged reward is always the raw total.
  genre   (synthetic world) how much more likely the tokens are under the user's preferred genre than
          under the average genre (the token classifier of pgen_jax.data.genre_probe).
  pixel   (synthetic world) how much nearer the decoded image's colour and stripe direction are to the
          preferred genre's signature than to the average genre's (synthetic.signature_margin).
  fixed   (tests) the share of tokens drawn from one fixed image's few codes: a hackable reward, the
          same image wins for every user. The same term can be injected into `models` with a weight
          for `fixed` in grpo.reward_weights.

Minus grpo.diversity_weight x the diversity penalty (mean cosine, -1..1, to other users' images).
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from pgen_jax.data import synthetic
from pgen_jax.data.genre_probe import fit_classifier
from pgen_jax.rewards.compose import RunningScale, combine
from pgen_jax.rewards.models import load_reward_models
from pgen_jax.rewards.similarity import similarity_to_other_users
from pgen_jax.sampling.sampler import per_sample
from pgen_jax.scorer.client import profile_text
from pgen_jax.scorer.launch import scorer_client


KINDS = ("models", "genre", "pixel", "fixed")
SYNTHETIC_ONLY = ("genre", "pixel")   # they judge the synthetic world's genres
IMAGE_KINDS = ("models", "pixel")     # they judge images: the sampler decodes its tokens for these


def token_embeddings(tokens: np.ndarray, vocab: int) -> np.ndarray:
  """Bag-of-tokens histograms: the image embedding when no CLIP is configured."""
  return np.stack([np.bincount(t, minlength=vocab) for t in tokens]).astype(np.float32)


@dataclasses.dataclass
class Scored:
  total: np.ndarray          # (N,) raw total: weighted raw terms minus the diversity penalty (logged)
  train: np.ndarray          # (N,) what the advantages use: `total`, or the running-normalised total
  base: np.ndarray           # (N,) the weighted raw terms alone (validation: comparable across roll-backs)
  terms: dict                # {term: (N,)} raw
  emb: np.ndarray            # (N, D) image embeddings for the hacking signals
  weights: dict = dataclasses.field(default_factory=dict)  # {term: weight} of the raw terms `train` sums


class Rewards:
  """Per-sample reward terms and their weighted total for one rollout."""

  def __init__(self, cfg, model, mesh):
    grpo_cfg = cfg.grpo
    self.kind, self.vocab = grpo_cfg.reward, model.config.vq.num_embeddings
    self.diversity = grpo_cfg.diversity_weight
    self.scorer_wait = 0.0  # seconds the last step waited for the scorer
    self.fixed = np.random.default_rng(grpo_cfg.fixed_seed).choice(self.vocab, 4, replace=False)
    self.scale = None
    self.needs_images = self.kind in IMAGE_KINDS
    if self.kind == "genre":
      self.classifier, _ = fit_classifier(cfg, model)
    elif self.kind == "models":
      self._init_models(cfg, mesh)
    elif self.kind not in ("pixel", "fixed"):
      raise ValueError(f"grpo.reward: {self.kind!r}; use {', '.join(KINDS)}")

  def _init_models(self, cfg, mesh):
    grpo_cfg = cfg.grpo
    self.models = load_reward_models(cfg.reward_models, mesh, jnp.dtype(cfg.model.dtype))
    self.reward_cfg = self.models.config(((k, float(v)) for k, v in grpo_cfg.reward_weights.items()),
                                         grpo_cfg.reward_normalize)
    self.terms_fn = self.models.terms_fn(self.reward_cfg)
    self.scale = RunningScale() if grpo_cfg.reward_normalize == "running" else None
    self.scorer = None
    if any(self.reward_cfg.active.get(k) for k in ("profile", "nima")):
      self.scorer = scorer_client(cfg.reward_models, cfg.workdir)  # the one answering at scorer_url, else one started here

  def submit(self, tokens: np.ndarray, images: np.ndarray | None, users: np.ndarray, raw: dict,
             samples: int) -> dict:
    """Starts the slow part, the scorer request, and returns what `finish` needs; N = prompts x samples."""
    future = None
    if self.kind == "models" and self.scorer is not None:
      profiles = [profile_text(list(t)) for t in per_sample(np.asarray(raw["history_text"]), samples)]
      future = self.scorer.submit(images, [k for k in ("profile", "nima") if k in self.reward_cfg.active], profiles)
    return dict(tokens=tokens, images=images, users=users, raw=raw, samples=samples, future=future)

  def finish(self, job: dict, *, learn_scale: bool = True) -> Scored:
    """The scores of a job from `submit`; learn_scale=False (validation) leaves the running
    normalisation alone, and `train` is then the raw total."""
    tokens, users = job["tokens"], job["users"]
    terms: dict[str, np.ndarray] = {}
    emb = token_embeddings(tokens, self.vocab)
    self.scorer_wait = 0.0
    if self.kind == "genre":
      # Per-token log-likelihood ratio of the preferred genre against the average genre: smooth, unlike
      # the (saturating) posterior.
      logp = np.stack([self.classifier.log_p[:, t].mean(1) for t in tokens])  # (N, genres)
      want = synthetic.preferred_index(users)
      terms["genre"] = logp[np.arange(len(tokens)), want] - logp.mean(1)
      base = train = terms["genre"].copy()
    elif self.kind == "pixel":
      terms["pixel"] = synthetic.signature_margin(job["images"], users)
      base = train = terms["pixel"].copy()
    elif self.kind == "fixed":
      terms["fixed"] = self.fixed_share(tokens)
      base = train = terms["fixed"].copy()
    else:
      base, train, terms, emb = self._models(job, learn_scale)
    weights = dict(self.reward_cfg.active) if self.kind == "models" else {self.kind: 1.0}
    total = base
    if self.diversity:
      terms["diversity"] = similarity_to_other_users(emb, users).astype(np.float32)
      weights["diversity"] = -self.diversity
      total, train = base - self.diversity * terms["diversity"], train - self.diversity * terms["diversity"]
    return Scored(total=total, train=train, base=base, terms=terms, emb=emb, weights=weights)

  def fixed_share(self, tokens: np.ndarray) -> np.ndarray:
    return np.isin(tokens, self.fixed).mean(1).astype(np.float32)

  def _models(self, job, learn_scale: bool):
    raw, images = job["raw"], job["images"]
    # The references once per prompt: each image is encoded once and shared by the prompt's G samples.
    data = {"generated": images, **{k: np.asarray(raw[k]) for k in ("history", "target", "future") if k in raw}}
    terms = self.terms_fn(data)
    if "fixed" in self.reward_cfg.active:
      terms["fixed"] = self.fixed_share(job["tokens"])
    if job["future"] is not None:
      t = time.perf_counter()
      terms.update(job["future"].result())
      self.scorer_wait = time.perf_counter() - t
    active = {k: np.asarray(terms[k], np.float32) for k in self.reward_cfg.active if k in terms}
    total = np.asarray(combine(self.reward_cfg, active))
    train = total
    if self.scale is not None and learn_scale:
      train = np.asarray(combine(self.reward_cfg, active, self.scale.update(active, job["samples"])))
    return total, train, terms, self.models.embeddings(images)
