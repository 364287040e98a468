"""Model properties beyond parity: presets, sharding, KV cache, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx

from hf_janus import SIZES, hf_model
from pgen_jax.models import Janus, count_params, janus_pro_1b, janus_pro_7b, load_janus, make_mesh, tiny


@pytest.mark.parametrize("preset", [janus_pro_1b, janus_pro_7b])
def test_preset_parameter_count_matches_transformers(preset):
  cfg = preset()
  t = cfg.text
  hf_cfg = T.JanusConfig(
      text_config=dict(model_type="llama", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                       intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                       num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads),
      vision_config=dict(projection_dim=t.hidden_size),
      vq_config=dict(projection_dim=t.hidden_size, image_token_embed_dim=t.hidden_size),
      tie_word_embeddings=False)
  with torch.device("meta"):
    ref = sum(p.numel() for p in T.JanusForConditionalGeneration(hf_cfg).parameters())
  assert count_params(cfg) == ref


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  hf_model(seed=11, **SIZES["gqa"]).save_pretrained(path)
  return path


def test_sharded_model_equals_single_device(hf_path):
  one = load_janus(hf_path, mesh=make_mesh(devices=jax.devices()[:1]))
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  many = load_janus(hf_path, mesh=mesh)
  # Parameters really are split over the mesh.
  q = many.language_model.layers[0].self_attn.q_proj.kernel[...]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (q.shape[0] // 2, q.shape[1] // 2)
  cfg = one.config
  n = cfg.num_image_tokens
  ids = np.array([[1, 5 + i] + [cfg.image_token_id] * n + [7, 9] for i in range(4)])
  px = np.random.default_rng(0).uniform(-1, 1, (4, cfg.vision.image_size, cfg.vision.image_size, 3))
  ids, px = jnp.asarray(ids), jnp.asarray(px, jnp.float32)

  @nnx.jit
  def forward(model, ids, px):
    return model(ids, px).logits, model.decode_image_tokens(ids[:, 2:2 + n] % cfg.vq.num_embeddings)

  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  a = forward(one, ids, px)
  b = forward(many, jax.device_put(ids, batch), jax.device_put(px, batch))
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=2e-5, rtol=0)


def test_kv_cache_decode_equals_full_forward():
  model = Janus(tiny(), nnx.Rngs(1))
  ids = jnp.asarray(np.random.default_rng(1).integers(3, 300, size=(2, 12)))
  full = model(ids).logits
  cache = model.language_model.init_cache(2, 16)
  out = model(ids[:, :8], cache=cache, cache_index=0)  # prefill
  np.testing.assert_allclose(out.logits, full[:, :8], atol=1e-5, rtol=0)
  cache = out.cache
  for i in range(8, 12):  # one token at a time
    out = model(ids[:, i:i + 1], cache=cache, cache_index=i)
    cache = out.cache
    np.testing.assert_allclose(out.logits[:, 0], full[:, i], atol=1e-5, rtol=0)


def test_bf16_params_and_compute_stay_close_to_fp32(hf_path):
  f32 = load_janus(hf_path)
  bf16 = load_janus(hf_path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  assert bf16.lm_head.kernel[...].dtype == jnp.bfloat16
  assert bf16.language_model.norm.scale[...].dtype == jnp.bfloat16
  ids = jnp.asarray(np.random.default_rng(2).integers(3, 300, size=(2, 10)))
  a, b = f32(ids), bf16(ids)
  assert b.logits.dtype == jnp.float32 and b.hidden_states.dtype == jnp.bfloat16
  # bf16 keeps ~3 significant digits; fp32 norms/softmax keep the error at that level.
  err = np.abs(np.asarray(b.logits) - np.asarray(a.logits)).max() / np.abs(np.asarray(a.logits)).max()
  assert err < 0.05
  # Same greedy choice almost everywhere.
  agree = (np.asarray(b.logits).argmax(-1) == np.asarray(a.logits).argmax(-1)).mean()
  assert agree > 0.9


def test_map_chunks_pads_the_last_chunk_and_compiles_once():
  from pgen_jax.models.janus import map_chunks
  traced = []

  @jax.jit
  def f(x):
    traced.append(x.shape)  # runs once per traced shape
    return x.sum(axis=1) * 2

  x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
  np.testing.assert_array_equal(map_chunks(f, x, chunk=3), x.sum(axis=1) * 2)  # 3 + 3 + 1 (padded) rows
  assert traced == [(3, 3)]
  np.testing.assert_array_equal(map_chunks(f, x[:2], chunk=3), x[:2].sum(axis=1) * 2)  # fewer rows than a chunk
