"""GRPO's mathematics: group-relative advantages, the clipped surrogate, the k3 KL, aggregation, and
teacher-forced log-probs of sampled image tokens (of the conditional branch or of the CFG-combined
distribution). The jitted update step and the `grpo` stage build on these.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pgen_jax.models import lora
from pgen_jax.models.janus import Janus, from_uint8
from pgen_jax.models.llama import Prefix
from pgen_jax.sampling.sampler import per_sample
from pgen_jax.train.update import guarded_update


def group_advantages(rewards, group_size: int, *, scale: str = "std", eps: float = 1e-3):
  """(r - group mean) / max(group std, eps) ("std", GRPO) or r - group mean ("none", Dr.GRPO).

  rewards: (B * G,) with each prompt's G samples adjacent, as the sampler returns them. `eps` is in
  reward units: the smallest within-group spread treated as signal. A group that varies less gets
  advantages that shrink with its spread instead of being blown up to +-1 (as std + 1e-6 would do
  with rounding noise); groups_with_signal says which groups reach it (DAPO's dynamic sampling).
  """
  r = rewards.reshape(-1, group_size).astype(jnp.float32)
  a = r - r.mean(axis=1, keepdims=True)
  if scale == "std":
    a = a / jnp.maximum(r.std(axis=1, keepdims=True), eps)
  elif scale != "none":
    raise ValueError(f"advantage scale {scale!r}: use 'std' or 'none'")
  return a.reshape(-1)


def per_reward_advantages(terms: dict, weights: dict, group_size: int, *, scale: str = "std", eps: float = 1e-3):
  """sum_k w_k * group_advantages(r_k): each reward normalised within its group before the weighted sum
  (GDPO, arXiv 2601.05242), so that a reward of a large scale does not decide every advantage alone.
  terms {name: (B * G,)}, weights {name: w}; a term's `eps` is in its own units."""
  return sum(w * group_advantages(jnp.asarray(terms[k]), group_size, scale=scale, eps=eps)
             for k, w in weights.items() if w)


def groups_with_signal(rewards, group_size: int, eps: float = 1e-3):
  """(B,) whether each group's rewards spread by more than `eps` (std): groups of (nearly) equal
  rewards carry no learning signal."""
  return rewards.reshape(-1, group_size).astype(jnp.float32).std(axis=1) > eps


def per_reward_signal(terms: dict, weights: dict, advantages, group_size: int, eps: float = 1e-3):
  """groups_with_signal for per_reward_advantages: a group has signal when a weighted term spreads by more
  than `eps` and their normalised sum (`advantages`) does not cancel. Terms whose weighted sum is flat can
  still give advantages; terms in opposite orders can cancel."""
  used = [groups_with_signal(jnp.asarray(terms[k]), group_size, eps) for k, w in weights.items() if w]
  spread = jnp.stack(used).any(axis=0) if used else False
  return spread & groups_with_signal(jnp.asarray(advantages), group_size, 1e-6)


def clipped_surrogate(logp, old_logp, advantages, *, eps_low: float = 0.2, eps_high: float = 0.28):
  """Per-token loss -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) (DAPO's clip-higher), and
  whether each token was clipped. logp/old_logp: (N, T); advantages: (N,)."""
  ratio = jnp.exp(logp - old_logp)
  a = advantages[:, None]
  unclipped, clipped = ratio * a, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
  return -jnp.minimum(unclipped, clipped), (clipped < unclipped)


def kl_k3(logp, ref_logp):
  """Per-token k3 estimator of KL(policy || reference): exp(ref - p) - (ref - p) - 1 >= 0."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def aggregate(per_token, mask=None):
  """Mean over the kept tokens of the batch. Every image has the same number of tokens, so the token
  mean (DAPO), the mean of sequence means (GRPO) and Dr.GRPO's constant normaliser are one number:
  there is no aggregation option. `mask` (N, T) or (N, 1) leaves tokens or whole sequences out."""
  mask = jnp.ones_like(per_token) if mask is None else jnp.broadcast_to(mask, per_token.shape).astype(per_token.dtype)
  return (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def image_token_logprobs(model: Janus, ids, mask, images, tokens, *, uncond=None, uncond_mask=None,
                         cfg_weight: float = 0.0, temperature: float = 1.0, uncond_images: bool = False):
  """Log-probs (B * G, T) of sampled image tokens (B * G, T) given their B prompts, by teacher forcing.

  Shared like the sampler: each prompt (ids/mask (B, P); images (B * k, H, W, 3) in [-1, 1], each
  through SigLIP once) is one prefix pass; its G samples (rows b*G .. b*G+G-1 of `tokens`) continue
  it, attending to its keys and values, so gradients reach the prefix from all G. The prefix's last
  position predicts token 0 for all G.

  With `uncond` rows (B, U) and cfg_weight > 0: of the CFG-combined distribution
  softmax((u + w (c - u)) / T), the one the sampler draws from (AR-GRPO). Without: of the
  conditional branch (T2I-R1).
  """
  lm = model.language_model
  g = tokens.shape[0] // ids.shape[0]
  feats = model.get_image_features(images) if images.shape[0] else None
  fed = model.prepare_embeddings_for_image_generation(tokens[:, :-1])

  def logits_of(prompt_ids, pmask, use_images):
    emb = model.embed_inputs(prompt_ids, image_features=feats if use_images else None)
    hidden, kv = lm(emb, jnp.maximum(jnp.cumsum(pmask, 1) - 1, 0), pmask, return_kv=True)
    first = model.image_logits(hidden[:, -1])  # (B, V): token 0 of every sample of the prompt
    start = per_sample(pmask.sum(1), g)[:, None]
    cont, _ = lm(fed.astype(emb.dtype), start + jnp.arange(tokens.shape[1] - 1), None,
                 prefixes=[Prefix(kv, pmask)])
    return jnp.concatenate([per_sample(first, g)[:, None], model.image_logits(cont)], axis=1)

  logits = logits_of(ids, mask, True)
  if uncond is not None and cfg_weight:
    u = logits_of(uncond, mask if uncond_mask is None else uncond_mask, uncond_images)
    logits = u + cfg_weight * (logits - u)
  logits = logits / temperature
  return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[..., None], -1)[..., 0]


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  eps_low: float = 0.2
  eps_high: float = 0.28        # DAPO's clip-higher; = eps_low for symmetric clipping
  beta: float = 0.01            # KL to the reference model; 0 skips the reference entirely
  logprobs: str = "cond"        # cond (T2I-R1: the conditional branch) | cfg (AR-GRPO: the CFG mix)
  cfg_weight: float = 5.0
  temperature: float = 1.0
  uncond_images: bool = False


def reference_params(params):
  """What the KL's reference model keeps of the trainable `params` (the loop keeps a copy): all of them;
  with LoRA, those without adapters (the parts of sft.trainable besides the LM, often none), as the
  reference is the same model with its adapters off (lora.adapters_off) over the frozen base weights."""
  return params.filter(nnx.Not(lora.ADAPTERS))


def grpo_loss(graphdef, params, frozen, ref_params, batch: dict, step_cfg: GRPOConfig):
  """Clipped surrogate + beta KL for a batch of sampled images.

  batch, per prompt: ids, mask (B, P); uncond, uncond_mask (B, U); images (B, k, H, W, 3) uint8.
  Per sample (a prompt's G adjacent): tokens, old_logp (B * G, T); advantages, weights (B * G,) (0
  leaves a sequence out: dynamic sampling). on_policy () bool: the batch was sampled with these very
  parameters, so the old log-probs are this pass's own (stop-gradient), which makes the ratio
  exactly 1 in any dtype and mode; otherwise old_logp (the same teacher-forced function, evaluated
  with the sampling parameters).
  """
  images = from_uint8(batch["images"].reshape(-1, *batch["images"].shape[2:]))
  kw = dict(temperature=step_cfg.temperature)
  if step_cfg.logprobs == "cfg":
    kw.update(uncond=batch["uncond"], uncond_mask=batch.get("uncond_mask"), cfg_weight=step_cfg.cfg_weight,
              uncond_images=step_cfg.uncond_images)

  def logprobs(model):
    return image_token_logprobs(model, batch["ids"], batch["mask"], images, batch["tokens"], **kw)

  logp = logprobs(nnx.merge(graphdef, params, frozen))
  old_logp = jnp.where(batch["on_policy"], jax.lax.stop_gradient(logp), batch["old_logp"])
  per_token, clipped = clipped_surrogate(logp, old_logp, batch["advantages"], eps_low=step_cfg.eps_low,
                                         eps_high=step_cfg.eps_high)
  keep = batch["weights"][:, None]
  loss = aggregate(per_token, keep)
  # ratio_mean is 1 on-policy; with sample-ahead it shows how far one update moved the policy.
  metrics = {"clip_fraction": aggregate(clipped.astype(jnp.float32), keep), "neg_logp": -logp.mean(),
             "ratio_mean": jnp.exp(logp - old_logp).mean(), "logp": jax.lax.stop_gradient(logp)}
  if step_cfg.beta:
    ref = nnx.merge(graphdef, params, frozen)
    nnx.update(ref, ref_params)  # the reference's trainable parts; with LoRA, its base is the frozen one
    with lora.adapters_off(ref):
      ref_logp = logprobs(ref)
    kl = aggregate(kl_k3(logp, jax.lax.stop_gradient(ref_logp)), keep)
    loss = loss + step_cfg.beta * kl
    metrics["kl"] = kl
  return loss, metrics


def split_prompts(batch: dict, parts: int) -> dict:
  """(B, ...) per-prompt and (B * G, ...) per-sample arrays -> (parts, ...) micro-batches of whole
  groups (a prompt's samples stay with it, so its prefix is still shared); scalars go to every part."""
  return jax.tree.map(lambda x: x.reshape(parts, x.shape[0] // parts, *x.shape[1:]) if x.ndim
                      else jnp.broadcast_to(x, (parts,)), batch)


def update_step(graphdef, tx, step_cfg: GRPOConfig, state: dict, frozen, ref_params, batch: dict, *,
                micro_batches: int = 1):
  """One guarded optimizer update, gradients accumulated over `micro_batches` slices of the prompts
  (equal slices: their means average to the batch's, up to dynamic sampling's uneven weights). Call
  it again on the same batch for further inner updates, with on_policy False and old_logp = the
  first call's returned log-probs (metrics["logp"], the policy before any of them), which makes the
  later ones off-policy corrected."""
  def grads_of(b):
    (loss, metrics), grads = jax.value_and_grad(grpo_loss, argnums=1, has_aux=True)(
        graphdef, state["params"], frozen, ref_params, b, step_cfg)
    logp = metrics.pop("logp")
    return (loss, metrics, grads), logp

  if micro_batches == 1:
    (loss, metrics, grads), logp = grads_of(batch)
  else:
    micro = split_prompts(batch, micro_batches)

    def accumulate(carry, b):
      out, logp = grads_of(b)
      return jax.tree.map(jnp.add, carry, out), logp

    shapes = jax.eval_shape(lambda b: grads_of(b)[0], jax.tree.map(lambda x: x[0], micro))
    total, logp = jax.lax.scan(accumulate, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), micro)
    loss, metrics, grads = jax.tree.map(lambda x: x / micro_batches, total)
    logp = logp.reshape(-1, logp.shape[-1])
  metrics["logp"] = logp
  state, guard = guarded_update(tx, state, loss, grads)
  return state, {**guard, **metrics}
