"""The GRPO stage: rollouts with the CFG sampler, rewards, group advantages, guarded updates, the
reward-hacking defence, checkpoints and resume. Starts from <workdir>/sft/final (else the configured
model) and writes under <workdir>/grpo: latest/ best/ (orbax), tb/, grids/, summary.json, final/.

Rewards (grpo.reward):
  models  the weighted terms of pgen_jax.rewards.compose (CLIP/DINO/LPIPS/SSIM in jit, from
          grpo.clip / grpo.dino / grpo.lpips_vgg + grpo.lpips_heads) plus the scorer's profile/nima
          (grpo.scorer_url), scored in the background (see sample-ahead below).
  genre   (synthetic world) how much more likely the tokens are under the user's preferred genre than
          under the average genre (the token classifier of pgen_jax.eval.genre): a simple deterministic reward.
  fixed   (tests) the share of tokens drawn from one fixed image's few codes: a hackable reward, the
          same image wins for every user.

Sample-ahead (grpo.sample_ahead, default on): each step samples the NEXT batch, with the parameters
before this step's update, before it waits for this batch's rewards, so the scorer's latency hides
behind a rollout. Those samples are one update stale when trained on; the PPO ratio corrects for it
with the log-probs stored at sampling time (ratio_mean logs the gap). No batch is sampled ahead
across a checkpoint, so a resumed run starts from exactly the state that was saved.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.data import synthetic
from pgen_jax.data.pipeline import loader_from_config
from pgen_jax.eval.grids import save_grid
from pgen_jax.fileio import write_json
from pgen_jax.models.checkpoint import save_janus
from pgen_jax.models.janus import to_uint8
from pgen_jax.sampling import Sampler, SamplingConfig
from pgen_jax.models.llama import remat_policy
from pgen_jax.train import grpo, update
from pgen_jax.train.sft import to_unit
from pgen_jax.train.checkpoints import Checkpoints
from pgen_jax.train.hacking import DefenceConfig, HackingMonitor, diversity_penalty
from pgen_jax.train.setup import (Prompter, mesh_from_config, model_from_config, prompt_batch, to_device,
                                  trained_checkpoint)


class HackingDetected(update.RunStopped):
  pass


def _token_embeddings(tokens: np.ndarray, vocab: int) -> np.ndarray:
  """Bag-of-tokens histograms: the image embedding when no CLIP is configured."""
  return np.stack([np.bincount(t, minlength=vocab) for t in tokens]).astype(np.float32)


class Rewards:
  """Per-sample reward terms and their weighted total for one rollout."""

  def __init__(self, cfg, model, mesh, prompter):
    g = cfg.grpo
    self.kind, self.vocab = g.reward, model.config.vq.num_embeddings
    self.diversity = g.diversity_weight
    self.scorer_wait = 0.0  # seconds the last step waited for the scorer
    if self.kind == "genre":
      from pgen_jax.eval.genre import fit_classifier
      self.classifier, _ = fit_classifier(cfg, model)
    elif self.kind == "fixed":
      self.fixed = np.random.default_rng(g.fixed_seed).choice(self.vocab, 4, replace=False)
    elif self.kind == "models":
      self._init_models(cfg, mesh)
    else:
      raise ValueError(f"grpo.reward: {self.kind!r}; use models, genre or fixed")

  def _init_models(self, cfg, mesh):
    from pgen_jax.rewards.models import load_reward_models
    g = cfg.grpo
    self.models = load_reward_models(g, mesh, jnp.dtype(cfg.model.dtype))
    self.rcfg = self.models.config((k, float(v)) for k, v in g.reward_weights.items())
    self.terms_fn = self.models.terms_fn(self.rcfg)
    self.scorer = None
    if any(self.rcfg.active.get(k) for k in ("profile", "nima")):
      from pgen_jax.scorer.launch import scorer_client
      self.scorer = scorer_client(g, cfg.workdir)  # the one answering at scorer_url, else one started here

  def submit(self, tokens: np.ndarray, images: np.ndarray | None, users: np.ndarray, raw: dict,
             samples: int) -> dict:
    """Starts the slow part, the scorer request, and returns what `finish` needs; N = prompts x samples."""
    future = None
    if self.kind == "models" and self.scorer is not None:
      from pgen_jax.scorer.client import profile_text
      profiles = [profile_text(list(t)) for t in np.repeat(np.asarray(raw["history_text"]), samples, axis=0)]
      future = self.scorer.submit(images, [k for k in ("profile", "nima") if k in self.rcfg.active], profiles)
    return dict(tokens=tokens, images=images, users=users, raw=raw, samples=samples, future=future)

  def finish(self, job: dict) -> tuple[np.ndarray, dict, np.ndarray]:
    """(total reward (N,), {term: (N,)}, image embeddings (N, D)) for a job from `submit`."""
    tokens, users = job["tokens"], job["users"]
    terms: dict[str, np.ndarray] = {}
    emb = _token_embeddings(tokens, self.vocab)
    self.scorer_wait = 0.0
    if self.kind == "genre":
      # Per-token log-likelihood ratio of the preferred genre against the average genre: smooth, unlike
      # the (saturating) posterior.
      logp = np.stack([self.classifier.log_p[:, t].mean(1) for t in tokens])  # (N, genres)
      want = [synthetic.GENRES.index(synthetic.preferred_genre(int(u))) for u in users]
      terms["genre"] = logp[np.arange(len(tokens)), want] - logp.mean(1)
      total = terms["genre"].copy()
    elif self.kind == "fixed":
      terms["fixed"] = np.isin(tokens, self.fixed).mean(1)
      total = terms["fixed"].copy()
    else:
      total, terms, emb = self._models(job)
    if self.diversity:
      terms["diversity"] = np.asarray(diversity_penalty(jnp.asarray(emb), jnp.asarray(users)))
      total = total - self.diversity * terms["diversity"]
    return total, terms, emb

  def _models(self, job):
    from pgen_jax.rewards.compose import combine
    raw, images = job["raw"], job["images"]
    rep = lambda x: np.repeat(np.asarray(x), job["samples"], axis=0)
    data = {"generated": images, "history": rep(raw["history"]), "target": rep(raw["target"])}
    if "future" in raw:
      data["future"] = rep(raw["future"])
    terms = self.terms_fn(data)
    if job["future"] is not None:
      t = time.perf_counter()
      terms.update(job["future"].result())
      self.scorer_wait = time.perf_counter() - t
    total = np.asarray(combine(self.rcfg, {k: jnp.asarray(v) for k, v in terms.items()}))
    return total, terms, self.models.embeddings(images)


@dataclasses.dataclass
class Rollout:
  """One batch of histories with their G samples each, ready for rewards and the update."""
  x: dict             # the prompt batch (host)
  batch: dict         # update inputs on the devices, old_logp included
  job: dict           # the reward job from Rewards.submit
  seconds: float      # sampling time


def grpo_dir(cfg) -> Path:
  return Path(cfg.workdir) / "grpo"


def run_grpo(cfg) -> dict:
  out = grpo_dir(cfg)
  if (out / "final").exists():
    logging.info("GRPO already finished: %s", out / "final")
    return json.loads((out / "summary.json").read_text())
  out.mkdir(parents=True, exist_ok=True)
  g = cfg.grpo
  mesh = mesh_from_config(cfg)
  model = model_from_config(cfg, mesh, trained_checkpoint(cfg, stages=("sft",)))
  model.language_model.remat = remat_policy(g.remat)
  prompter = Prompter(cfg, model.config)
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(tuple(cfg.sft.trainable)), ...)
  ref_params = jax.tree.map(jnp.copy, params) if g.beta else None
  tx = update.make_optimizer(g.lr, g.warmup_steps, g.num_steps, cfg.sft.b1, cfg.sft.b2, 0.0, cfg.sft.clip)
  state = update.init_state(params, tx, cfg.seed, mesh)
  step_cfg = grpo.GRPOConfig(eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta, aggregation=g.aggregation,
                             logprobs=g.logprobs, cfg_weight=g.cfg_weight, temperature=g.temperature,
                             uncond_images=cfg.prompt.uncond == "keep_images")
  replicated = NamedSharding(mesh, P())
  micro_batches = g.prompts_per_step // g.micro_batch if g.micro_batch else 1
  update_fn = jax.jit(functools.partial(grpo.update_step, graphdef, tx, step_cfg, micro_batches=micro_batches),
                      donate_argnums=(0,),
                      out_shardings=(jax.tree.map(lambda x: x.sharding, state), replicated))
  old_logp_fn = jax.jit(lambda p, b: grpo.image_token_logprobs(
      nnx.merge(graphdef, p, frozen), b["ids"], b["mask"], to_unit(b["images"].reshape(-1, *b["images"].shape[2:])),
      b["tokens"], temperature=g.temperature))
  decode_fn = jax.jit(lambda p, t: to_uint8(nnx.merge(graphdef, p, frozen).decode_image_tokens(t)))
  sampler = Sampler(model, mesh, SamplingConfig(cfg_weight=g.cfg_weight, temperature=g.temperature,
                                                num_samples=g.group_size, decode_images=g.reward == "models"))
  rewards = Rewards(cfg, model, mesh, prompter)
  monitor = HackingMonitor(DefenceConfig(window=g.defence_window, std_ratio=g.defence_std_ratio,
                                         similarity=g.defence_similarity, patience=g.defence_patience,
                                         warmup=g.defence_warmup, response=g.defence_response))
  loader = loader_from_config(cfg, "train", batch_size=g.prompts_per_step // jax.process_count(), seed=cfg.seed,
                              with_future=any("future" in k for k in g.reward_weights))
  it = iter(loader)
  ckpts = Checkpoints(out, keep=cfg.sft.keep)
  summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
  restored = ckpts.restore_latest(state)
  step = 0
  if restored is not None:
    step, state, data_state = restored
    extra = json.loads(data_state)
    it.set_state(extra["iterator"].encode())
    monitor.restore(extra["monitor"])
    summary["rewards"] = summary.get("rewards", [])[:step]  # the summary may be ahead of the checkpoint
    logging.info("resumed GRPO at step %d", step)
  writer = metric_writers.create_default_writer(str(out / "tb"), just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=g.num_steps, writer=writer, every_steps=g.log_every)

  rows = lambda a: np.repeat(a, g.group_size, axis=0)

  def sample(at: int) -> Rollout:
    """Draws the next batch and samples it with the current parameters (rollout index `at`)."""
    raw = {k: np.array(v) for k, v in next(it).items()}
    x = prompter(raw)
    sampler.state = jax.device_put(nnx.state(nnx.merge(graphdef, state["params"], frozen)), sampler.state_shardings)
    t = time.perf_counter()
    pb = prompt_batch(x, cfg.prompt.uncond)
    roll = sampler(pb, jax.random.fold_in(jax.random.key(cfg.seed + 1), at))
    tokens = np.asarray(roll.tokens)
    seconds = time.perf_counter() - t
    job = rewards.submit(tokens, None if roll.images is None else np.asarray(roll.images), rows(raw["user"]), raw,
                         g.group_size)
    # Per prompt (its G samples share it in the update) and per sample.
    uncond, uncond_mask = pb.uncond_rows()  # at their true length, as the sampler prefilled them
    dev = to_device({"ids": x["ids"], "mask": x["mask"], "uncond": uncond, "uncond_mask": uncond_mask,
                     "images": x["history"], "tokens": tokens}, mesh)
    # Old log-probs under the sampling parameters, computed now: the update may come a step later.
    # Waited for, as the update donates these parameters.
    dev["old_logp"] = jax.block_until_ready(roll.logprobs if g.logprobs == "cfg" else old_logp_fn(state["params"], dev))
    return Rollout(x=x, batch=dev, job=job, seconds=seconds)

  ahead = None  # the batch sampled ahead during the previous step
  while step < g.num_steps:
    t0 = time.perf_counter()
    if ahead is None:
      cur = sample(step)
      rollout_time = cur.seconds
    else:  # sampled (and timed) during the previous step
      cur, ahead, rollout_time = ahead, None, 0.0
    if g.sample_ahead and step + 1 < g.num_steps and (step + 1) % g.ckpt_every:
      ahead = sample(step + 1)  # while the scorer works on `cur`
      rollout_time += ahead.seconds
    t1 = time.perf_counter()
    users = cur.job["users"]
    total, terms, emb = rewards.finish(cur.job)
    t2 = time.perf_counter()
    adv = grpo.group_advantages(jnp.asarray(total), g.group_size, scale=g.advantage_scale)
    dev = {**cur.batch, **to_device({"advantages": np.asarray(adv)}, mesh)}
    for _ in range(g.inner_updates):
      state, metrics = update_fn(state, frozen, ref_params, dev)
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    t3 = time.perf_counter()
    step += 1
    progress(step)
    m.update({"time/rollout": rollout_time, "time/reward": t2 - t1, "time/scorer_wait": rewards.scorer_wait,
              "time/update": t3 - t2, "time/step": t3 - t0})
    similarity = float(np.mean(_cross(emb, users)))
    scalars = {"reward_mean": float(total.mean()), "reward_std": float(total.std()), "cross_user_similarity":
               similarity, "advantage_abs_mean": float(np.abs(np.asarray(adv)).mean()), **m}
    for k, v in terms.items():
      scalars[f"reward/{k}_mean"], scalars[f"reward/{k}_std"] = float(np.mean(v)), float(np.std(v))
    summary.setdefault("initial_reward", float(total.mean()))
    summary.setdefault("rewards", []).append(float(total.mean()))
    if step % g.log_every == 0 or step == g.num_steps:
      writer.write_scalars(step, scalars)
    if m["bad_streak"] >= cfg.sft.max_bad_steps:
      raise update.RunStopped(f"GRPO stopped at step {step}: {int(m['bad_streak'])} non-finite steps in a row; the last "
                         f"good checkpoint is step {ckpts.latest.latest_step()} in {out / 'latest'}")
    alarm = monitor.update(step, float(total.std()), similarity)
    if alarm is not None:
      summary.setdefault("alarms", []).append({"step": step, "reasons": alarm.reasons})
      write_json(out / "summary.json", summary)
      healthy = ckpts.latest.latest_step()
      rollbacks = sum(1 for a in summary["alarms"] if "rolled_back_to" in a)
      if g.defence_response == "stop" or healthy is None or rollbacks >= g.defence_max_rollbacks:
        ckpts.wait()
        raise HackingDetected(f"reward hacking suspected at step {step}: {'; '.join(alarm.reasons)}. Stopped; the "
                              f"last healthy checkpoint is step {healthy} in {out / 'latest'}")
      step, state, data_state = ckpts.restore_latest(state)  # roll back, then train more cautiously
      ahead = None
      extra = json.loads(data_state)
      it.set_state(extra["iterator"].encode())
      monitor = HackingMonitor(monitor.cfg)
      state["lr_scale"] = state["lr_scale"] * g.defence_lr_factor
      rewards.diversity = max(rewards.diversity, 0.1) * g.defence_diversity_factor
      summary["alarms"][-1]["rolled_back_to"] = step
      summary["rewards"] = summary["rewards"][:step]
      write_json(out / "summary.json", summary)
      progress = periodic_actions.ReportProgress(num_train_steps=g.num_steps, writer=writer, every_steps=g.log_every)
      logging.warning("reward hacking suspected (%s): rolled back to step %d, lr x%g, diversity weight %g",
                      alarm.reasons, step, g.defence_lr_factor, rewards.diversity)
      continue
    if step % g.grid_every == 0 or step == g.num_steps:
      n = min(4, len(cur.x["ids"])) * g.group_size
      images = cur.job["images"] if cur.job["images"] is not None else decode_fn(state["params"], cur.job["tokens"][:n])
      save_grid(cur.x["history"][:n // g.group_size], np.asarray(images[:n]), cur.x["target"][:n // g.group_size],
                out, step, writer)
    if step % g.ckpt_every == 0 or step == g.num_steps:
      ckpts.save(step, state, json.dumps({"iterator": it.get_state().decode(), "monitor": monitor.state()}))
      ckpts.save_best(step, state["params"], -float(total.mean()))
      write_json(out / "summary.json", summary)
  ckpts.wait()
  summary.update(steps=g.num_steps, final_reward=float(np.mean(summary["rewards"][-max(1, g.log_every):])))
  write_json(out / "summary.json", summary)
  writer.flush()
  save_janus(nnx.merge(graphdef, state["params"], frozen), out / "final")
  ckpts.close()
  return summary


def _cross(emb: np.ndarray, users: np.ndarray) -> np.ndarray:
  from pgen_jax.train.hacking import cross_user_similarity
  return np.asarray(cross_user_similarity(jnp.asarray(emb), jnp.asarray(users)))
