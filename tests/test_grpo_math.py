"""GRPO's mathematics against hand-computed values, and teacher-forced log-probs against the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgen_jax.models import Janus, make_mesh, tiny
from pgen_jax.sampling import PromptBatch, Sampler, SamplingConfig, SpecialTokens, uncond_ids
from pgen_jax.train import grpo, sft


def test_group_advantages():
  r = jnp.array([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])  # two prompts x three samples
  np.testing.assert_allclose(grpo.group_advantages(r, 3, scale="none"), [-1, 1, 0, 0, -2, 2], atol=1e-6)
  s1, s2 = np.sqrt(2 / 3), np.sqrt(8 / 3)
  np.testing.assert_allclose(grpo.group_advantages(r, 3), [-1 / s1, 1 / s1, 0, 0, -2 / s2, 2 / s2], rtol=1e-5)
  with pytest.raises(ValueError):
    grpo.group_advantages(r, 3, scale="rank")


def test_clipped_surrogate_and_clip_higher():
  old = jnp.log(jnp.array([[0.5, 0.5, 0.5]]))
  new = jnp.log(jnp.array([[0.5, 0.75, 0.25]]))  # ratios 1, 1.5, 0.5
  loss, clipped = grpo.clipped_surrogate(new, old, jnp.array([2.0]), eps_low=0.2, eps_high=0.28)
  # A > 0: min(r A, clip(r) A) = 2, 1.28 * 2, 0.5 * 2
  np.testing.assert_allclose(loss, [[-2.0, -2.56, -1.0]], rtol=1e-6)
  np.testing.assert_array_equal(clipped, [[False, True, False]])
  loss, clipped = grpo.clipped_surrogate(new, old, jnp.array([-1.0]), eps_low=0.2, eps_high=0.28)
  # A < 0: min(-r, -clip(r)) = -1, -1.5, -0.8
  np.testing.assert_allclose(loss, [[1.0, 1.5, 0.8]], rtol=1e-6)
  np.testing.assert_array_equal(clipped, [[False, False, True]])


def test_kl_k3():
  p, ref = jnp.log(jnp.array([0.5, 0.2])), jnp.log(jnp.array([0.25, 0.2]))
  np.testing.assert_allclose(grpo.kl_k3(p, ref), [0.5 - np.log(0.5) - 1, 0.0], atol=1e-6)
  assert (grpo.kl_k3(jnp.linspace(-3, 0, 7), jnp.linspace(0, -3, 7)) >= 0).all()


def test_aggregation_and_dynamic_sampling_weights():
  x = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
  assert float(grpo.aggregate(x)) == pytest.approx(10 / 6)
  assert float(grpo.aggregate(x, jnp.array([[1.0], [0.0]]))) == pytest.approx(2.0)  # the second sequence left out
  assert float(grpo.aggregate(x, jnp.zeros((2, 1)))) == 0.0


def test_near_constant_groups_have_no_signal():
  # group 1 differs by rounding noise, group 2 by real amounts
  r = jnp.array([5.0, 5.0 + 2e-6, 5.0 - 2e-6, 1.0, 2.0, 3.0])
  a = np.asarray(grpo.group_advantages(r, 3, eps=1e-3))
  assert np.abs(a[:3]).max() < 1e-2  # not blown up (std + 1e-6 would give +-0.8)
  np.testing.assert_allclose(a[3:], np.array([-1.0, 0.0, 1.0]) / np.sqrt(2 / 3), rtol=1e-5)
  np.testing.assert_array_equal(grpo.groups_with_signal(r, 3, 1e-3), [False, True])


def batch_with_history(model, rng, prompts=2):
  cfg = model.config
  n, img = cfg.num_image_tokens, cfg.image_token_id
  special = SpecialTokens(bos=1, pad=0, boi=317, eoi=318, image=img)
  row = [1, 40, 41] + [317] + [img] * n + [318] + [42, 317]
  ids = np.array([row] * prompts, np.int32)
  ids[1, 1] = 50
  mask = np.ones_like(ids)
  images = rng.uniform(-1, 1, (prompts, 1, 16, 16, 3)).astype(np.float32)
  return ids, mask, uncond_ids(ids, mask, special), images


def test_cfg_logprobs_equal_the_samplers():
  model = Janus(tiny(), nnx.Rngs(3))
  rng = np.random.default_rng(0)
  ids, mask, uncond, images = batch_with_history(model, rng)
  samples = 3
  sampler = Sampler(model, make_mesh(devices=jax.devices()[:1]),
                    SamplingConfig(cfg_weight=3.0, temperature=1.3, num_samples=samples, decode_images=False))
  out = sampler(PromptBatch(ids=ids, mask=mask, uncond=uncond, images=images.reshape(-1, 16, 16, 3),
                            uncond_has_images=False), jax.random.key(1))
  rows = lambda x: jnp.repeat(jnp.asarray(x), samples, axis=0)
  got = grpo.image_token_logprobs(model, rows(ids), rows(mask), rows(images), out.tokens, uncond=rows(uncond),
                                  cfg_weight=3.0, temperature=1.3)
  np.testing.assert_allclose(np.asarray(got), np.asarray(out.logprobs), atol=2e-5)


def test_conditional_logprobs_are_the_sft_cross_entropy():
  model = Janus(tiny(), nnx.Rngs(4))
  rng = np.random.default_rng(1)
  ids, mask, _, images = batch_with_history(model, rng)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 16)), jnp.int32)
  logp = grpo.image_token_logprobs(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(images), tokens)
  ce = sft.image_loss(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(images), tokens)
  np.testing.assert_allclose(-float(logp.mean()), float(ce), rtol=1e-5)


@pytest.mark.parametrize("mode", ["cond", "cfg"])
def test_update_moves_log_probs_with_the_advantages(mode):
  import optax
  from pgen_jax.train import update
  model = Janus(tiny(), nnx.Rngs(5))
  rng = np.random.default_rng(2)
  ids, mask, uncond, images = batch_with_history(model, rng)
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
  cfg = grpo.GRPOConfig(logprobs=mode, cfg_weight=2.0, beta=0.1)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 16)), jnp.int32)
  uint8 = ((images + 1) * 127.5).round().astype(np.uint8)
  batch = {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask), "uncond": jnp.asarray(uncond),
           "images": jnp.asarray(uint8), "tokens": tokens, "advantages": jnp.array([1.0, -1.0])}
  old = grpo.image_token_logprobs(nnx.merge(graphdef, params, frozen), batch["ids"], batch["mask"],
                                  jnp.asarray(uint8, jnp.float32) / 127.5 - 1, tokens,
                                  **({"uncond": batch["uncond"], "cfg_weight": 2.0} if mode == "cfg" else {}))
  batch.update(old_logp=old, on_policy=jnp.asarray(False), weights=jnp.ones(2))
  tx = optax.sgd(0.05)
  state = update.init_state(params, tx)
  state, m = jax.jit(lambda s, b: grpo.update_step(graphdef, tx, cfg, s, frozen, params, b))(state, batch)
  assert float(m["kl"]) == pytest.approx(0.0, abs=1e-7)  # policy == reference before the update
  assert float(m["clip_fraction"]) == 0.0 and int(m["skipped"]) == 0
  new = grpo.image_token_logprobs(nnx.merge(graphdef, state["params"], frozen), batch["ids"], batch["mask"],
                                  jnp.asarray(uint8, jnp.float32) / 127.5 - 1, tokens,
                                  **({"uncond": batch["uncond"], "cfg_weight": 2.0} if mode == "cfg" else {}))
  delta = np.asarray(new - old).sum(1)
  assert delta[0] > 0 > delta[1]  # the sample with the positive advantage became more likely


def unshared_logprobs(model, ids, mask, images, tokens, uncond=None, cfg_weight=0.0, temperature=1.0):
  """The definition, one row per sample: its prompt (repeated) and its tokens in one plain forward."""
  def logits_of(prompt_ids, imgs):
    prompt = model.embed_inputs(prompt_ids, imgs)
    fed = model.prepare_embeddings_for_image_generation(tokens[:, :-1])
    full = jnp.concatenate([mask, jnp.ones_like(tokens[:, :-1])], 1)
    hidden, _ = model.language_model(jnp.concatenate([prompt, fed], 1), jnp.cumsum(full, 1) - 1, full)
    return model.image_logits(hidden[:, prompt_ids.shape[1] - 1:])

  logits = logits_of(ids, images)
  if uncond is not None:
    u = logits_of(uncond, None)
    logits = u + cfg_weight * (logits - u)
  return jnp.take_along_axis(jax.nn.log_softmax(logits / temperature, -1), tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("mode", ["cond", "cfg"])
def test_shared_prefix_loss_and_gradients_equal_the_unshared_computation(mode):
  """One prefix pass per prompt with its G continuations gives the loss and gradients of G separate
  full-length rows; gradients reach the prefix (the LM's weights, SigLIP frozen) from all G."""
  from pgen_jax.train import update
  model = Janus(tiny(), nnx.Rngs(6), attention_impl="blockwise")  # the kernel long prompts use; small blocks below
  rng = np.random.default_rng(3)
  ids, mask, uncond, images = batch_with_history(model, rng)
  g = 3
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
  ref_params = jax.tree.map(lambda p: p + 0.01 * jnp.sin(p * 7.0), params)  # a reference that differs
  tokens = jnp.asarray(rng.integers(0, 64, (2 * g, 16)), jnp.int32)
  uint8 = ((images + 1) * 127.5).round().astype(np.uint8)
  cfg = grpo.GRPOConfig(logprobs=mode, cfg_weight=2.0, beta=0.05, temperature=1.3)
  batch = {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask), "uncond": jnp.asarray(uncond),
           "images": jnp.asarray(uint8), "tokens": tokens,
           "old_logp": jnp.asarray(rng.normal(-4.2, 0.2, (2 * g, 16)), jnp.float32),
           "advantages": jnp.asarray(rng.normal(size=2 * g), jnp.float32), "on_policy": jnp.asarray(False),
           "weights": jnp.ones(2 * g)}
  (loss, metrics), grads = jax.value_and_grad(grpo.grpo_loss, argnums=1, has_aux=True)(
      graphdef, params, frozen, ref_params, batch, cfg)

  rows = lambda x: jnp.repeat(jnp.asarray(x), g, axis=0)
  unit = rows(jnp.asarray(uint8, jnp.float32) / 127.5 - 1.0)
  kw = dict(uncond=rows(uncond), cfg_weight=2.0) if mode == "cfg" else {}

  def reference_loss(p):
    logp = unshared_logprobs(nnx.merge(graphdef, p, frozen), rows(ids), rows(mask), unit, tokens,
                             temperature=1.3, **kw)
    ref = jax.lax.stop_gradient(unshared_logprobs(nnx.merge(graphdef, ref_params, frozen), rows(ids), rows(mask),
                                                  unit, tokens, temperature=1.3, **kw))
    per_token, _ = grpo.clipped_surrogate(logp, batch["old_logp"], batch["advantages"])
    return grpo.aggregate(per_token) + 0.05 * grpo.aggregate(grpo.kl_k3(logp, ref))

  want_loss, want = jax.value_and_grad(reference_loss)(params)
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * np.abs(b).max(),
                               err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(grads["language_model"]["layers"]["self_attn"]["k_proj"]["kernel"][0]).max()) > 0


def update_batch(rng, ids, mask, uncond, images, g):
  """A GRPO update's batch for these prompts and g samples each: random tokens, old log-probs, advantages."""
  rows = len(ids) * g
  return {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask), "uncond": jnp.asarray(uncond),
          "images": jnp.asarray(((images + 1) * 127.5).round().astype(np.uint8)),
          "tokens": jnp.asarray(rng.integers(0, 64, (rows, 16)), jnp.int32),
          "old_logp": jnp.asarray(rng.normal(-4.2, 0.2, (rows, 16)), jnp.float32),
          "advantages": jnp.asarray(rng.normal(size=rows), jnp.float32), "on_policy": jnp.asarray(False),
          "weights": jnp.ones(rows)}


def test_micro_batched_update_equals_the_whole_batch():
  import optax
  from pgen_jax.train import update
  model = Janus(tiny(), nnx.Rngs(7))
  rng = np.random.default_rng(4)
  ids, mask, uncond, images = batch_with_history(model, rng, prompts=4)
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
  g = 2
  batch = update_batch(rng, ids, mask, uncond, images, g)
  tx = optax.sgd(0.1)
  cfg = grpo.GRPOConfig(beta=0.05)
  ref_params = jax.tree.map(lambda p: p * 0.99, params)
  run = lambda m: jax.jit(lambda s, b: grpo.update_step(graphdef, tx, cfg, s, frozen, ref_params, b,
                                                        micro_batches=m))(update.init_state(params, tx), batch)
  whole, m1 = run(1)
  micro, m2 = run(2)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(micro["params"]), jax.tree.leaves(whole["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(m2["logp"]), np.asarray(m1["logp"]), rtol=1e-5)  # in row order

@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_scans_the_layers_with_the_same_loss_and_gradients(policy):
  """Remat runs the decoder layers as a scan of checkpointed steps (shared prefixes included): the loss
  and gradients are the forward's without remat, and with nothing saved the backward keeps less."""
  from pgen_jax.train import update
  model = Janus(tiny(), nnx.Rngs(8))
  rng = np.random.default_rng(5)
  ids, mask, uncond, images = batch_with_history(model, rng)
  g = 2
  batch = update_batch(rng, ids, mask, uncond, images, g)
  cfg = grpo.GRPOConfig(logprobs="cfg", cfg_weight=2.0, beta=0.05)

  def loss_and_grads(remat):  # the same seed: the same weights, built with this policy
    graphdef, params, frozen = nnx.split(Janus(tiny(), nnx.Rngs(8), remat=remat),
                                         update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
    ref = jax.tree.map(lambda p: p * 0.99, params)
    f = jax.jit(jax.value_and_grad(lambda p: grpo.grpo_loss(graphdef, p, frozen, ref, batch, cfg)[0]))
    return f(params), f.lower(params).compile().memory_analysis().temp_size_in_bytes

  (plain_loss, plain), plain_temp = loss_and_grads("none")
  (loss, grads), temp = loss_and_grads(policy)
  np.testing.assert_allclose(float(loss), float(plain_loss), rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * np.abs(b).max(),
                               err_msg=jax.tree_util.keystr(path))
  if policy == "full":  # keeps only each layer's input (at this tiny size dots_saveable keeps about as much)
    assert temp < plain_temp, (temp, plain_temp)


@pytest.mark.parametrize("mode", ["cond", "cfg"])
def test_on_policy_ratio_is_exactly_one_in_bf16(mode):
  """A batch trained with the parameters that sampled it: the update's own teacher-forced log-probs
  are the old ones, so the ratio is exactly 1 (in bf16, and with CFG's 5c - 4u), nothing is clipped,
  and the log-probs it returns for later inner updates are the pre-update policy's."""
  import optax
  from pgen_jax.train import update
  model = Janus(tiny(), nnx.Rngs(5), dtype=jnp.bfloat16)
  rng = np.random.default_rng(3)
  ids, mask, uncond, images = batch_with_history(model, rng)
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
  cfg = grpo.GRPOConfig(logprobs=mode, cfg_weight=5.0, beta=0.0)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 16)), jnp.int32)
  uint8 = ((images + 1) * 127.5).round().astype(np.uint8)
  batch = {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask), "uncond": jnp.asarray(uncond),
           "images": jnp.asarray(uint8), "tokens": tokens, "advantages": jnp.array([1.0, -1.0]),
           "old_logp": jnp.full((2, 16), -50.0), "on_policy": jnp.asarray(True), "weights": jnp.ones(2)}
  tx = optax.sgd(0.05)
  state = update.init_state(params, tx)
  step = jax.jit(lambda s, b: grpo.update_step(graphdef, tx, cfg, s, frozen, None, b))
  state, m = step(state, batch)
  assert float(m["ratio_mean"]) == 1.0 and float(m["clip_fraction"]) == 0.0
  # the returned log-probs are the teacher-forced ones of the policy before the update
  kw = {"uncond": batch["uncond"], "cfg_weight": 5.0} if mode == "cfg" else {}
  before = grpo.image_token_logprobs(nnx.merge(graphdef, params, frozen), batch["ids"], batch["mask"],
                                     jnp.asarray(uint8, jnp.float32) / 127.5 - 1, tokens, **kw)
  after = grpo.image_token_logprobs(nnx.merge(graphdef, state["params"], frozen), batch["ids"], batch["mask"],
                                    jnp.asarray(uint8, jnp.float32) / 127.5 - 1, tokens, **kw)
  err, moved = (float(np.abs(np.asarray(x) - np.asarray(before)).max()) for x in (m["logp"], after))
  # measured: 1.5e-4 (cond) and 1.1e-3 (cfg) from the pre-update values, 0.034 and 0.28 from the post-update ones
  assert err < 4e-3 and moved > 5 * 4e-3, (err, moved)
  # a second inner update on them is off-policy corrected: its log-probs are the updated policy's, and its
  # ratio their exp(after - returned) per token, averaged
  _, m2 = step(state, {**batch, "old_logp": m["logp"], "on_policy": jnp.asarray(False)})
  np.testing.assert_allclose(np.asarray(m2["logp"]), np.asarray(after), atol=4e-3)
  want = np.mean(np.exp(np.asarray(after, np.float64) - np.asarray(m["logp"], np.float64)))
  assert abs(float(m2["ratio_mean"]) - want) < 1e-3  # cfg: 0.99576 against 0.99580 (cond moves it 3e-5)


def test_schedule_first_update_trains_and_ends_at_the_floor():
  from pgen_jax.train.update import lr_schedule
  no_warmup = lr_schedule(1.0, 0, 10)
  assert float(no_warmup(0)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.1)), rel=1e-6)
  assert float(no_warmup(9)) == pytest.approx(0.1, rel=1e-6)  # the last of 10 updates
  warm = lr_schedule(2.0, 4, 10)
  np.testing.assert_allclose([float(warm(c)) for c in range(4)], [0.5, 1.0, 1.5, 2.0], rtol=1e-6)
  assert float(warm(9)) == pytest.approx(0.2, rel=1e-6)


def test_per_reward_advantages_let_a_small_scale_reward_count():
  """Two rewards of scales 1000 apart, ranking one group's 4 samples in opposite orders. Summed first, the
  large one decides every advantage; normalised in the group first (GDPO), each counts by its weight."""
  big = jnp.array([1000.0, 2000.0, 3000.0, 4000.0])
  small = jnp.array([0.4, 0.3, 0.2, 0.1])
  z = np.array([-3, -1, 1, 3]) / np.sqrt(5)  # (x - mean) / population std of 1, 2, 3, 4, by hand
  summed = grpo.group_advantages(big + 2.0 * small, 4)
  np.testing.assert_allclose(np.asarray(summed), z, atol=1e-3)  # the small reward is lost
  per = grpo.per_reward_advantages({"big": big, "small": small, "off": big}, {"big": 1.0, "small": 2.0, "off": 0.0}, 4)
  np.testing.assert_allclose(np.asarray(per), z - 2.0 * z, atol=1e-5)  # 1 x z(big) + 2 x z(small) = -z
  # with Dr.GRPO's scale (no division) each reward keeps its units
  none = grpo.per_reward_advantages({"big": big, "small": small}, {"big": 1.0, "small": 2.0}, 4, scale="none")
  np.testing.assert_allclose(np.asarray(none), [-1500.0 + 0.3, -500.0 + 0.1, 500.0 - 0.1, 1500.0 - 0.3], rtol=1e-6)



def test_per_reward_signal_counts_terms_that_cancel_in_the_sum():
  """Three groups of 2 samples, rewards a (weight 1) and b (weight 2), c (weight 0). Group 0: a + 2b is flat
  (0 + 2, 2 + 0) but each term spreads: per reward its advantages are 1 x (-1, 1) + 2 x (1, -1) = (1, -1).
  Group 1: a and b flat, only the unweighted c spreads. Group 2: a = b in opposite orders at weight 1 each
  would cancel; here b's weight 2 keeps it, so it has signal; summed (a + 2b = 3, 3) it has none."""
  terms = {"a": jnp.array([0.0, 2.0, 5.0, 5.0, 0.0, 1.0]), "b": jnp.array([1.0, 0.0, 2.0, 2.0, 1.5, 1.0]),
           "c": jnp.array([0.0, 0.0, 0.0, 9.0, 0.0, 0.0])}
  weights = {"a": 1.0, "b": 2.0, "c": 0.0}
  summed = terms["a"] + 2.0 * terms["b"]
  assert np.asarray(grpo.groups_with_signal(summed, 2)).tolist() == [False, False, False]
  adv = grpo.per_reward_advantages(terms, weights, 2)
  np.testing.assert_allclose(np.asarray(adv), [1.0, -1.0, 0.0, 0.0, 1.0, -1.0], atol=1e-6)  # by hand, as above
  assert np.asarray(grpo.per_reward_signal(terms, weights, adv, 2)).tolist() == [True, False, True]
  # equal weights, opposite orders: the normalised terms cancel, no signal although each spreads
  equal = {"a": 1.0, "b": 1.0}
  flat = grpo.per_reward_advantages({"a": terms["a"], "b": 2.0 - terms["a"]}, equal, 2)
  assert np.asarray(grpo.per_reward_signal({"a": terms["a"], "b": 2.0 - terms["a"]}, equal, flat, 2)).tolist()[0] is False


def test_advantage_mode_is_checked():
  from configs.demo import get_config
  from pgen_jax import settings
  from pgen_jax.errors import ConfigError
  raw = get_config()
  raw.grpo.advantage = "per_rewards"
  with pytest.raises(ConfigError, match="grpo.advantage"):
    settings.from_config(raw)
  raw.grpo.advantage = "per_reward"
  assert settings.from_config(raw).grpo.advantage == "per_reward"


@pytest.mark.parametrize("mode", ["cond", "cfg"])
def test_old_logprobs_in_micro_batches_equal_one_pass(mode):
  """grpo.micro_batch also slices the old log-probs of a batch sampled ahead (each slice's activations
  alone): the same values as one pass over the batch."""
  from configs.demo import get_config
  from pgen_jax import settings
  from pgen_jax.train import steps, update
  raw = get_config()
  raw.grpo.prompts_per_step, raw.grpo.group_size, raw.grpo.logprobs = 4, 2, mode
  model = Janus(tiny(), nnx.Rngs(5))
  rng = np.random.default_rng(7)
  ids, mask, uncond, images = batch_with_history(model, rng, prompts=4)
  uint8 = ((images + 1) * 127.5).round().astype(np.uint8)
  b = {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask), "uncond": jnp.asarray(uncond),
       "uncond_mask": jnp.asarray(uncond != 0, jnp.int32), "images": jnp.asarray(uint8),
       "tokens": jnp.asarray(rng.integers(0, 64, (8, 16)), jnp.int32)}
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
  out = {}
  for micro in (0, 2, 1):
    raw.grpo.micro_batch = micro
    cfg = settings.from_config(raw)
    out[micro] = np.asarray(steps.grpo_old_logprobs(graphdef, cfg.grpo, cfg.prompt)(params, frozen, b))
  assert out[0].shape == (8, 16) and np.isfinite(out[0]).all()
  np.testing.assert_allclose(out[2], out[0], atol=1e-5)
  np.testing.assert_allclose(out[1], out[0], atol=1e-5)
