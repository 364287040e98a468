"""LoRA adapters through qwix (pgen_jax.models.lora) on the tiny Janus in fp32, over both decoder-layer
paths: unrolled slices of the stacked weights (remat none) and the remat lax.scan (full)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pgen_jax.errors import ConfigError
from pgen_jax.models import Janus, tiny
from pgen_jax.models import lora
from pgen_jax.train import grpo

CFG = lora.LoraConfig(rank=4, alpha=8.0)
TARGETS = [f"language_model/layers/{m}" for m in ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj",
                                                  "self_attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")]


@functools.cache
def _built() -> Janus:
  return Janus(tiny(), nnx.Rngs(0))


def base(remat: str = "none", dtype=None) -> Janus:
  """One initialisation (the slow part on CPU) for every test: its weights under another remat policy or
  compute dtype (both static, part of the graphdef). Tests leave it as it is."""
  if remat == "none" and dtype is None:
    return _built()
  abstract = nnx.eval_shape(lambda: Janus(tiny(), nnx.Rngs(0), remat=remat, dtype=dtype))
  return nnx.merge(nnx.graphdef(abstract), nnx.state(_built()))


def prompt_and_tokens():
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(3, 300, (2, 6)), jnp.int32)  # text only: no image placeholders
  tokens = jnp.asarray(rng.integers(0, 64, (2, 8)), jnp.int32)
  return ids, tokens


@nnx.jit
def image_logits(model, ids, tokens):
  """Teacher forcing: the prompt, then image tokens 0..T-2 fed back; logits (B, T, V) of tokens 0..T-1."""
  emb = jnp.concatenate([model.embed_inputs(ids), model.prepare_embeddings_for_image_generation(tokens[:, :-1])], 1)
  hidden, _ = model.language_model(emb)
  return model.image_logits(hidden[:, ids.shape[1] - 1:])


def flat(state) -> dict:
  return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


def randomize_adapters(model, seed: int = 1):
  """Non-zero A and B (B starts at zero), so the adapters change the model."""
  leaves, treedef = jax.tree.flatten(nnx.state(model, lora.ADAPTERS))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(model, jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, x.shape, x.dtype)
                                                 for k, x in zip(keys, leaves)]))


@pytest.mark.parametrize("remat", ["none", "full"])
def test_zero_init_equals_base_and_merge_equals_adapted(remat):
  plain = base(remat)
  model = lora.apply_lora(plain, CFG)
  ids, tokens = prompt_and_tokens()

  adapters = flat(nnx.state(model, lora.ADAPTERS))
  assert sorted(adapters) == sorted(f"{t}/kernel_lora_{x}" for t in TARGETS for x in "ab")
  for t in TARGETS:
    a, b = adapters[f"{t}/kernel_lora_a"][...], adapters[f"{t}/kernel_lora_b"][...]
    kernel = flat(nnx.state(plain))[f"{t}/kernel"][...]
    assert a.shape == (*kernel.shape[:2], CFG.rank) and b.shape == (kernel.shape[0], CFG.rank, kernel.shape[2])
    assert not np.any(np.asarray(b)) and np.all(np.abs(np.asarray(a)).reshape(len(a), -1).max(1) > 0)
  assert not flat(nnx.state(plain, lora.ADAPTERS))  # the base model is left as it was

  base_logits = np.asarray(image_logits(plain, ids, tokens))
  np.testing.assert_array_equal(np.asarray(image_logits(model, ids, tokens)), base_logits)

  randomize_adapters(model)
  adapted = np.asarray(image_logits(model, ids, tokens))
  assert np.abs(adapted - base_logits).max() > 1e-2  # the adapters are in the forward
  merged = lora.merge(model)
  assert nnx.graphdef(merged) == nnx.graphdef(plain)  # a plain Janus: no adapters, no interception
  np.testing.assert_allclose(np.asarray(image_logits(merged, ids, tokens)), adapted, atol=1e-5, rtol=0)
  with lora.adapters_off(model):  # the same weights as the base model, adapters unread
    np.testing.assert_array_equal(np.asarray(image_logits(model, ids, tokens)), base_logits)
  np.testing.assert_array_equal(np.asarray(image_logits(model, ids, tokens)), adapted)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_only_the_adapters_train(remat):
  """Through GRPO's teacher-forced log-probs (prefix pass + continuation): an optimizer over
  lora.ADAPTERS holds state for them alone, every adapter leaf of every layer gets a non-zero
  gradient, and one update changes them and nothing else of the full state."""
  model = lora.apply_lora(base(remat), CFG)
  randomize_adapters(model)
  ids, tokens = prompt_and_tokens()
  mask, images = jnp.ones_like(ids), jnp.zeros((0, 16, 16, 3), jnp.float32)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=lora.ADAPTERS)
  adapter_paths = set(flat(nnx.state(model, lora.ADAPTERS)))
  opt_leaves = jax.tree.leaves(nnx.state(optimizer))
  assert sum(x.size for x in opt_leaves) <= 1  # sgd: the step count only

  def loss(m):
    return -grpo.image_token_logprobs(m, ids, mask, images, tokens).mean()

  @nnx.jit
  def step(m, opt):
    grads = nnx.grad(loss, argnums=nnx.DiffState(0, lora.ADAPTERS))(m)
    opt.update(m, grads)
    return grads

  before = {k: np.asarray(v[...]) for k, v in flat(nnx.state(model)).items()}
  grads = flat(step(model, optimizer))
  assert set(grads) == adapter_paths
  for path, g in grads.items():
    per_layer = np.abs(np.asarray(g[...])).reshape(g[...].shape[0], -1).max(1)
    assert np.all(per_layer > 0), path
  after = {k: np.asarray(v[...]) for k, v in flat(nnx.state(model)).items()}
  assert set(after) == set(before)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed == adapter_paths


def test_trainable_filter_keeps_unadapted_parts_training():
  model = lora.apply_lora(base(), CFG)
  _, params, _ = nnx.split(model, lora.trainable_filter(("language_model", "generation_head")), ...)
  parts = {p.split("/")[0] + ("/lora" if "_lora_" in p else "") for p in flat(params)}
  assert parts == {"language_model/lora", "generation_head"}


def test_bf16_compute_keeps_the_activations_bf16():
  """fp32 adapters in a bf16 forward (unrolled layers): qwix's sum alone would come out in fp32."""
  model = lora.apply_lora(base(dtype=jnp.bfloat16), CFG)
  hidden = jax.eval_shape(lambda x: model.language_model(x)[0], jax.ShapeDtypeStruct((1, 3, 64), jnp.bfloat16))
  assert hidden.dtype == jnp.bfloat16


def test_adapters_are_fp32_on_a_bf16_base():
  """A frozen base stored in bf16 (model.param_dtype) keeps its bytes; the adapters that train are fp32."""
  model = lora.apply_lora(Janus(tiny(), nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), CFG)
  linears = lora.adapted_modules(model)
  assert len(linears) == 7
  for _, linear in linears:
    assert linear.kernel[...].dtype == jnp.bfloat16
    assert linear.kernel_lora_a[...].dtype == linear.kernel_lora_b[...].dtype == jnp.float32
  hidden = jax.eval_shape(lambda x: model.language_model(x)[0], jax.ShapeDtypeStruct((1, 3, 64), jnp.bfloat16))
  assert hidden.dtype == jnp.bfloat16
  assert lora.merge(model).language_model.layers.self_attn.q_proj.kernel[...].dtype == jnp.bfloat16


def test_bad_targets_are_config_errors():
  plain = base()
  with pytest.raises(ConfigError, match="matches no linear module"):
    lora.apply_lora(plain, lora.LoraConfig(target=r"language_model/layers/self_attn/qq_proj"))
  with pytest.raises(ConfigError, match="lm_head"):
    lora.apply_lora(plain, lora.LoraConfig(target=r"lm_head|language_model/layers/self_attn/q_proj"))
  with pytest.raises(ConfigError, match="rank"):
    lora.apply_lora(plain, lora.LoraConfig(rank=0))
  with pytest.raises(ConfigError, match="vision_model/encoder/layers/0/self_attn/q_proj"):
    lora.apply_lora(plain, lora.LoraConfig(target=r".*/q_proj"))  # SigLIP has q_proj modules too
  only_q = lora.apply_lora(plain, lora.LoraConfig(rank=2, target=r"language_model/.*/q_proj"))
  assert sorted(flat(nnx.state(only_q, lora.ADAPTERS))) == [f"{TARGETS[0]}/kernel_lora_{x}" for x in "ab"]
  with pytest.raises(ValueError, match="already carries"):
    lora.apply_lora(only_q, CFG)
