"""The GRPO stage: rollouts with the CFG sampler, rewards (pgen_jax.train.grpo_rewards), group
advantages, guarded updates, the reward-hacking defence (signals in pgen_jax.train.hacking, the
stop / roll-back response in pgen_jax.train.grpo_defence), validation, checkpoints and resume. Starts from
<workdir>/sft/final (else the configured model) and writes under <workdir>/grpo: latest/ best/
(orbax), tb/, grids/, rollouts/ (grpo.save_rollouts), summary.json, final/ (with LoRA: the adapters merged
into the base weights, a plain Janus; LoRA's adapters start afresh on the SFT result).

Old log-probs: a batch sampled with the parameters being updated (no sample-ahead, first inner
update) is trained with the update's own teacher-forced log-probs as the old ones (stop-gradient):
the ratio is exactly 1, in bf16 and with logprobs=cfg too. Later inner updates use the first one's
log-probs. A batch sampled ahead gets its old log-probs at sampling time from the same teacher-forced
function (cond or CFG-combined, as grpo.logprobs says) with the sampling parameters, not from the
sampler's KV-cache pass, whose bf16 rounding CFG's w c - (w - 1) u would magnify.

Sample-ahead (grpo.sample_ahead, default on): each step samples the NEXT batch, with the parameters
before this step's update, before it waits for this batch's rewards, so the scorer's latency hides
behind a rollout. Those samples are one update stale when trained on; the PPO ratio corrects for it
(ratio_mean logs the gap). No batch is sampled ahead across a checkpoint, so a resumed run starts
from exactly the state that was saved.

Validation (grpo.eval_every): the same first prompts_per_step validation windows, sampled with the
same key every time and scored with the training terms (without the diversity penalty, whose weight
a roll-back changes); `best/` keeps the checkpoint with the highest validation reward among those
taken while the defence had no step flagged.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax import distributed
from pgen_jax.data.pipeline import loader_from_config
from pgen_jax.fileio import write_bytes, write_json
from pgen_jax.models.janus import to_uint8
from pgen_jax.models.llama import remat_policy
from pgen_jax.models.sharding import to_device
from pgen_jax.rewards.similarity import cross_user_similarity
from pgen_jax.sampling import Sampler, per_sample
from pgen_jax.sampling.prompter import Prompter, prompt_batch
from pgen_jax.setup import mesh_from_config, trained_checkpoint
from pgen_jax.train.stage_model import check_base, save_final, training_model
from pgen_jax.train import grpo, harness, steps, update
from pgen_jax.train.grpo_defence import Defence
from pgen_jax.train.grpo_rewards import Rewards, Scored
from pgen_jax.train.hacking import drift_stats
from pgen_jax.viz import save_grid


@dataclasses.dataclass
class Rollout:
  """One batch of histories with their G samples each, ready for rewards and the update."""
  x: dict             # the prompt batch (host)
  batch: dict         # update inputs on the devices, old_logp included
  job: dict           # the reward job from Rewards.submit
  seconds: float      # sampling time
  on_policy: bool     # sampled with the parameters it is trained on (not sampled ahead)


def grpo_dir(cfg) -> Path:
  return Path(cfg.workdir) / "grpo"


def _uses_future(grpo_cfg) -> bool:
  return any("future" in k and v for k, v in grpo_cfg.reward_weights.items())


def run_grpo(cfg) -> dict:
  out = grpo_dir(cfg)
  if (done := harness.finished("GRPO", out)) is not None:
    return done
  out.mkdir(parents=True, exist_ok=True)
  grpo_cfg = cfg.grpo
  mesh = mesh_from_config(cfg)
  base = trained_checkpoint(cfg, stages=("sft",))
  check_base(cfg, out, base)
  model = training_model(cfg, mesh, base, remat=remat_policy(grpo_cfg.remat))
  graphdef, params, frozen = nnx.split(model, update.stage_filter(cfg), ...)
  # With LoRA no copy of the language model: the reference is the same model with its adapters off.
  ref_params = jax.tree.map(jnp.copy, grpo.reference_params(params)) if grpo_cfg.beta else None
  # The schedule counts optimizer updates: inner_updates per step.
  tx = steps.grpo_optimizer(grpo_cfg)
  state = update.init_state(params, tx, cfg.seed, mesh)
  replicated = NamedSharding(mesh, P())
  fns = StepFunctions(cfg, graphdef, frozen, tx, state, replicated)
  rewards = Rewards(cfg, model, mesh)
  defence = Defence(cfg)
  rollouts = Rollouts(cfg, model, mesh, graphdef, frozen, rewards, defence, fns)
  validation = Validation(cfg) if grpo_cfg.eval_every else None
  # Enough kept that one from before an alarm's first flagged samples survives: those were drawn up to
  # patience + 1 steps before the alarm (+1 sampled ahead).
  flagged_span = math.ceil((grpo_cfg.defence_patience + 2) / grpo_cfg.ckpt_every)
  loop = harness.Harness("GRPO", out, num_steps=grpo_cfg.num_steps, log_every=grpo_cfg.log_every,
                         ckpt_every=grpo_cfg.ckpt_every, keep=max(cfg.sft.keep, 2 + flagged_span),
                         max_bad_steps=cfg.sft.max_bad_steps)
  summary = harness.load_summary(out)
  step, state, data_state = loop.resume(state)
  if data_state is not None:
    extra = rollouts.restore(data_state)
    if "defence" in extra:  # checkpoints from before the roll-back state was saved have none
      defence.restore(extra["defence"], rewards)
    _truncate(summary, step, loop.ckpts.best.all_steps())  # the summary may be ahead of the checkpoint
  now = {"ahead": None}  # the batch sampled ahead during the previous step; this step's rollout and scores

  def train(at, state):
    t0 = time.perf_counter()
    if now["ahead"] is None:
      cur = rollouts.sample(at, state["params"], ahead=False)
      rollout_time = cur.seconds
    else:  # sampled (and timed) during the previous step
      cur, now["ahead"], rollout_time = now["ahead"], None, 0.0
    if grpo_cfg.sample_ahead and at + 1 < grpo_cfg.num_steps and (at + 1) % grpo_cfg.ckpt_every:
      now["ahead"] = rollouts.sample(at + 1, state["params"], ahead=True)  # while the scorer works on `cur`
      rollout_time += now["ahead"].seconds
    t1 = time.perf_counter()
    scored = rewards.finish(cur.job)
    t2 = time.perf_counter()
    adv, signal, state, metrics = fns.train_on(cur, scored, state, ref_params)
    t3 = time.perf_counter()
    metrics.update({"time/rollout": rollout_time, "time/reward": t2 - t1, "time/scorer_wait": rewards.scorer_wait,
                    "time/update": t3 - t2, "time/step": t3 - t0})
    similarity = cross_user_similarity(scored.emb, cur.job["users"])
    drift = drift_stats(cur.job["tokens"], cur.job["images"], rewards.vocab)
    scalars = _step_scalars(scored, adv, signal, similarity, drift, metrics, rewards)
    summary.setdefault("initial_reward", float(scored.total.mean()))
    summary.setdefault("rewards", []).append(float(scored.total.mean()))
    if grpo_cfg.save_rollouts and (at + 1) % grpo_cfg.save_rollouts == 0:
      _save_rollout(out / "rollouts" / f"step_{at + 1:07d}.npz", cur, scored, scalars["reward_mean"])
    now.update(cur=cur, scored=scored, similarity=similarity, drift=drift)
    return state, scalars

  def defend(step, state, m):
    """The defence's response to an alarm (stop, or roll back and go on from there); else the grids."""
    cur = now["cur"]
    alarm = defence.monitor.update(step, float(now["scored"].total.std()), now["similarity"], now["drift"],
                                   drawn_by=step - 1 if cur.on_policy else step - 2)
    if alarm is None:
      if loop.due(step, grpo_cfg.grid_every):
        _grid(cur, fns, state["params"], grpo_cfg.group_size, out, step, loop.writer)
      return None
    summary.setdefault("alarms", []).append({"step": step, "reasons": alarm.reasons})
    write_json(out / "summary.json", summary)
    healthy = loop.ckpts.latest_before(alarm.suspect_from)  # whose samples were not flagged
    if defence.must_stop(healthy):
      loop.ckpts.wait()
      defence.stop(alarm, step, healthy, out / "latest")
    step, state, data_state = loop.ckpts.roll_back(healthy, state)  # then train more cautiously
    now["ahead"] = None
    rollouts.restore(data_state)
    state = defence.roll_back(state, rewards, replicated)
    summary["alarms"][-1]["rolled_back_to"] = step
    _truncate(summary, step, loop.ckpts.best.all_steps())
    write_json(out / "summary.json", summary)
    logging.warning("reward hacking suspected (%s): rolled back to step %d (roll-back %d), lr x%g, diversity "
                    "weight %g", alarm.reasons, step, defence.rollbacks, defence.lr_scale, rewards.diversity)
    return step, state

  def validate(step, state):
    if validation is not None and loop.due(step, grpo_cfg.eval_every):
      val = rollouts.validate(validation.raw, state["params"])
      loop.writer.write_scalars(step, {"val/reward": val})
      summary.setdefault("validation", []).append({"step": step, "reward": val, "flagged": defence.monitor.flagged})
      if defence.monitor.flagged == 0:  # only checkpoints taken while nothing looked like hacking
        loop.ckpts.save_best(step, state["params"], -val)
        if val >= summary.get("best_reward", -np.inf):
          summary.update(best_step=step, best_reward=val)
    write_json(out / "summary.json", summary)

  extra_state = lambda: json.dumps({"iterator": rollouts.iterator.get_state().decode(),
                                    "defence": defence.state(rewards),
                                    "reward_scale": rewards.scale.state() if rewards.scale else {}})
  state = loop.run(step, state, train, report=lambda _, m: m, after=defend, data_state=extra_state,
                   after_save=validate, sync_every_step=True)
  loop.ckpts.wait()
  summary.update(steps=grpo_cfg.num_steps,
                 final_reward=float(np.mean(summary["rewards"][-max(1, grpo_cfg.log_every):])))
  write_json(out / "summary.json", summary)
  loop.writer.flush()
  save_final(cfg, mesh, nnx.merge(graphdef, state["params"], frozen), out, base)
  loop.close()
  return summary


class StepFunctions:
  """The jitted functions of a GRPO step: the update (with its advantages), the old log-probs of a
  batch sampled ahead, and decoding tokens for the grids."""

  def __init__(self, cfg, graphdef, frozen, tx, state, replicated):
    grpo_cfg = cfg.grpo
    self.grpo_cfg, self.frozen, self.mesh = grpo_cfg, frozen, replicated.mesh
    self.update = steps.grpo_update_step(graphdef, tx, grpo_cfg, cfg.prompt, jax.tree.map(lambda x: x.sharding, state),
                                         self.mesh)
    self.old_logp = steps.grpo_old_logprobs(graphdef, grpo_cfg, cfg.prompt)  # (params, frozen, batch)
    self.decode = jax.jit(lambda p, t: to_uint8(nnx.merge(graphdef, p, frozen).decode_image_tokens(t)))
    self.on_policy = {b: jax.device_put(np.bool_(b), replicated) for b in (False, True)}

  def train_on(self, cur: Rollout, scored: Scored, state, ref_params):
    """Group advantages and grpo.inner_updates updates on one rollout -> (advantages, groups with
    signal, state, metrics)."""
    grpo_cfg = self.grpo_cfg
    if grpo_cfg.advantage == "per_reward":
      adv = np.asarray(grpo.per_reward_advantages(scored.terms, scored.weights, grpo_cfg.group_size,
                                                  scale=grpo_cfg.advantage_scale, eps=grpo_cfg.advantage_eps))
      signal = np.asarray(grpo.per_reward_signal(scored.terms, scored.weights, adv, grpo_cfg.group_size,
                                                 grpo_cfg.advantage_eps))
    else:
      adv = np.asarray(grpo.group_advantages(jnp.asarray(scored.train), grpo_cfg.group_size,
                                             scale=grpo_cfg.advantage_scale, eps=grpo_cfg.advantage_eps))
      signal = np.asarray(grpo.groups_with_signal(jnp.asarray(scored.train), grpo_cfg.group_size,
                                                  grpo_cfg.advantage_eps))
    weights = per_sample(signal if grpo_cfg.dynamic_sampling else np.ones_like(signal),
                         grpo_cfg.group_size).astype(np.float32)
    dev = {**cur.batch, **_to_device_global({"advantages": adv, "weights": weights}, self.mesh),
           "on_policy": self.on_policy[cur.on_policy]}
    metrics = {}
    if weights.any():  # dynamic sampling: a batch without signal is not trained on
      for k in range(grpo_cfg.inner_updates):
        state, step_metrics = self.update(state, self.frozen, ref_params, dev)
        logp = step_metrics.pop("logp")
        if k == 0 and cur.on_policy:  # later inner updates: the policy before the first one
          dev = {**dev, "old_logp": jax.device_put(logp, dev["tokens"].sharding), "on_policy": self.on_policy[False]}
      metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    return adv, signal, state, metrics


class Rollouts:
  """Draws training batches and samples them (G per history) with given parameters, for the update
  and the reward job; resumes the data iterator from a checkpoint."""

  def __init__(self, cfg, model, mesh, graphdef, frozen, rewards: Rewards, defence: Defence, fns: StepFunctions):
    grpo_cfg = cfg.grpo
    self.cfg, self.grpo_cfg, self.mesh = cfg, grpo_cfg, mesh
    self.graphdef, self.frozen, self.rewards, self.defence, self.fns = graphdef, frozen, rewards, defence, fns
    self.prompter = Prompter(cfg, model.config)
    self.sampler = Sampler(model, mesh, steps.rollout_sampling(grpo_cfg, rewards.needs_images))
    loader = loader_from_config(cfg, "train", batch_size=grpo_cfg.prompts_per_step // jax.process_count(),
                                seed=cfg.seed, with_future=_uses_future(grpo_cfg))
    self.iterator = iter(loader)

  def restore(self, data_state: str) -> dict:
    """The iterator and the running reward scale from a checkpoint's extra state, which it returns."""
    extra = json.loads(data_state)
    self.iterator.set_state(extra["iterator"].encode())
    if self.rewards.scale is not None:
      self.rewards.scale.restore(extra.get("reward_scale", {}))
    return extra

  def _roll(self, raw: dict, params, key):
    x = self.prompter(raw)
    pb = prompt_batch(x, self.cfg.prompt.uncond)
    self.sampler.state = jax.device_put(nnx.state(nnx.merge(self.graphdef, params, self.frozen)),
                                        self.sampler.state_shardings)
    return x, pb, self.sampler(pb, key)

  def _submit(self, raw: dict, roll) -> dict:
    return self.rewards.submit(np.asarray(roll.tokens), None if roll.images is None else np.asarray(roll.images),
                               per_sample(raw["user"], self.grpo_cfg.group_size), raw, self.grpo_cfg.group_size)

  def sample(self, at: int, params, ahead: bool) -> Rollout:
    """Draws the next batch and samples it with `params` (rollout index `at`)."""
    # Each host reads its rows of the global batch; the rollout (prompts, sampling keys, rewards, advantages)
    # is then of the global batch on every host, as in one process: the Sampler needs the same inputs on
    # every host, and the defence's decisions must not differ between hosts.
    raw = distributed.gather_rows({k: np.array(v) for k, v in next(self.iterator).items()})
    t = time.perf_counter()
    x, pb, roll = self._roll(raw, params, self.defence.sampling_key(jax.random.key(self.cfg.seed + 1), at))
    tokens = np.asarray(roll.tokens)
    seconds = time.perf_counter() - t
    job = self._submit(raw, roll)
    # Per prompt (its G samples share it in the update) and per sample.
    uncond, uncond_mask = pb.uncond_rows()  # at their true length, as the sampler prefilled them
    dev = _to_device_global({"ids": x["ids"], "mask": x["mask"], "uncond": uncond, "uncond_mask": uncond_mask,
                             "images": x["history"], "tokens": tokens}, self.mesh)
    if ahead:  # trained after this step's update: old log-probs under the sampling parameters, now
      # (waited for, as the update donates these parameters)
      dev["old_logp"] = jax.block_until_ready(self.fns.old_logp(params, self.frozen, dev))
    else:  # the update's own log-probs stand in (GRPOConfig's on_policy)
      dev["old_logp"] = _to_device_global({"z": np.zeros(tokens.shape, np.float32)}, self.mesh)["z"]
    return Rollout(x=x, batch=dev, job=job, seconds=seconds, on_policy=not ahead)

  def validate(self, raw: dict, params) -> float:
    """The mean validation reward of `raw` (the training terms without the diversity penalty)."""
    _, _, roll = self._roll(raw, params, jax.random.key(self.cfg.seed + 2))  # the same key every time
    return float(self.rewards.finish(self._submit(raw, roll), learn_scale=False).base.mean())


class Validation:
  """The fixed validation batch: the first prompts_per_step windows of the validation split, in order."""

  def __init__(self, cfg):
    grpo_cfg = cfg.grpo
    loader = loader_from_config(cfg, "validation", batch_size=grpo_cfg.prompts_per_step // jax.process_count(),
                                seed=cfg.seed, shuffle=False, num_epochs=1, drop_remainder=False,
                                with_future=_uses_future(grpo_cfg))
    batch = next(iter(loader), None)
    if batch is None:
      raise ValueError("grpo.eval_every: the validation split has no windows; set data.val_windows >= 1 or grpo.eval_every=0")
    self.raw = distributed.gather_rows({k: np.array(v) for k, v in batch.items()})


def _to_device_global(batch: dict, mesh) -> dict:
  """A global host batch (the same on every host) -> global arrays: each host puts its own rows."""
  return to_device({k: distributed.local_rows(v) for k, v in batch.items()}, mesh)


def _step_scalars(scored: Scored, adv, signal, similarity: float, drift: dict, metrics: dict, rewards: Rewards) -> dict:
  scalars = {"reward_mean": float(scored.total.mean()), "reward_std": float(scored.total.std()),
             "cross_user_similarity": similarity, "advantage_abs_mean": float(np.abs(adv).mean()),
             "groups_without_signal": float((~signal).sum()), **{f"drift/{k}": v for k, v in drift.items()}, **metrics}
  if rewards.scale is not None:
    scalars["reward_train_mean"] = float(scored.train.mean())
  for k, v in scored.terms.items():
    scalars[f"reward/{k}_mean"], scalars[f"reward/{k}_std"] = float(np.mean(v)), float(np.std(v))
  return scalars


def _grid(cur: Rollout, fns: StepFunctions, params, group_size: int, out: Path, step: int, writer) -> None:
  """History | the G samples | target for the first 4 histories of the rollout."""
  n = min(4, len(cur.x["ids"])) * group_size
  images = cur.job["images"] if cur.job["images"] is not None else fns.decode(params, cur.job["tokens"][:n])
  save_grid(cur.x["history"][:n // group_size], np.asarray(images[:n]), cur.x["target"][:n // group_size],
            out, step, writer)


def _save_rollout(path: Path, cur: Rollout, scored: Scored, reward_mean: float) -> None:
  """One step's samples and scores, for checking the logged reward from outside."""
  arrays = {"tokens": cur.job["tokens"], "users": cur.job["users"], "total": scored.total, "reward_mean": reward_mean,
            **{f"term_{k}": v for k, v in scored.terms.items()}}
  if cur.job["images"] is not None:
    arrays["images"] = cur.job["images"]
  for k in ("history", "target", "future"):
    if k in cur.job["raw"]:
      arrays[k] = cur.job["raw"][k]
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_bytes(path, buf.getvalue())


def _truncate(summary: dict, step: int, best_steps=()) -> None:
  """Forgets what the summary says about steps after `step` (a resume or a roll-back), alarms aside. A
  best step after it names the checkpoint best/ kept (`best_steps`), if any, instead."""
  summary["rewards"] = summary.get("rewards", [])[:step]
  if "validation" in summary:
    summary["validation"] = [v for v in summary["validation"] if v["step"] <= step]
  if summary.get("best_step", -1) > step:
    del summary["best_step"], summary["best_reward"]
    kept = [v for v in summary.get("validation", []) if v["step"] in best_steps and v["step"] <= step]
    if kept:
      summary.update(best_step=kept[-1]["step"], best_reward=kept[-1]["reward"])
