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
  q = many.language_model.layers.self_attn.q_proj.kernel[...]  # all layers' (L, in, out): L stays whole
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2)
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


def all_eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs inside it (scan bodies, checkpoints, pjit)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
          yield from all_eqns(getattr(sub, "jaxpr", sub))


def test_decoder_layers_are_stored_stacked_and_no_forward_restacks_them():
  """Each decoder weight is one array with a leading layer axis, the model's logits are those of the same
  layers stored one by one, and no forward (the training one under remat with its gradient, a prefill
  handing back its keys and values, a cached decode against that prefix) stacks layer weights: the remat
  forward is one scan over the stored stack, the others read its slices; caches stay one per layer."""
  from pgen_jax.models.llama import Prefix
  model = Janus(tiny(), nnx.Rngs(0), remat="full")
  lm, t = model.language_model, tiny().text
  n, d, heads, kvh, hd, ff = 2, 64, 4, 2, 16, 136  # tiny's text model, by hand
  assert (t.num_hidden_layers, t.hidden_size, t.intermediate_size) == (n, d, ff)
  shapes = {"self_attn/q_proj/kernel": (n, d, heads * hd), "self_attn/k_proj/kernel": (n, d, kvh * hd),
            "self_attn/v_proj/kernel": (n, d, kvh * hd), "self_attn/o_proj/kernel": (n, heads * hd, d),
            "mlp/gate_proj/kernel": (n, d, ff), "mlp/up_proj/kernel": (n, d, ff), "mlp/down_proj/kernel": (n, ff, d),
            "input_layernorm/scale": (n, d), "post_attention_layernorm/scale": (n, d)}
  got = {"/".join(str(k.key) for k in p): x.shape
         for p, x in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(lm.layers)))[0]}
  assert got == shapes
  assert not any("layers" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(lm.embed_tokens)))

  graphdef, state = nnx.split(model)
  ids = jnp.asarray(np.random.default_rng(2).integers(3, 300, (2, 6)))
  mask = jnp.ones((2, 6), jnp.int32)

  def train(st):
    return jax.grad(lambda s: nnx.merge(graphdef, s)(ids).logits.sum())(st)

  def prefill(st):
    m = nnx.merge(graphdef, st)
    return m.language_model(m.embed_inputs(ids), None, mask, return_kv=True)

  def decode(st):
    m = nnx.merge(graphdef, st)
    _, kv = m.language_model(m.embed_inputs(ids), None, mask, return_kv=True)
    assert len(kv) == n and kv[0][0].shape == (2, kvh, 6, hd)  # one (k, v) per layer
    e = m.prepare_embeddings_for_image_generation(ids[:, :1] % 64)
    cache = m.language_model.init_cache(2, 4)
    assert len(cache) == n and cache[0][0].shape == (2, kvh, 4, hd)
    return m.language_model(e, jnp.full((2, 1), 6), None, cache, 0, prefixes=[Prefix(kv, mask)])

  stacked = set(shapes.values())
  for forward in (train, prefill, decode):
    eqns = list(all_eqns(jax.make_jaxpr(forward)(state).jaxpr))
    if forward is train:
      assert any(e.primitive.name == "scan" and e.params["length"] == n for e in eqns)
    restacked = [e for e in eqns if e.primitive.name in ("stack", "concatenate")  # jnp.stack is either
                 and any(tuple(v.aval.shape) in stacked for v in e.outvars)]
    assert not restacked, (forward.__name__, restacked)

  # The same logits as the layers stored one by one: a per-layer reference built from the stored slices.
  from pgen_jax.models.llama import DecoderLayer, rope_tables, Context
  plain = Janus(tiny(), nnx.Rngs(0))
  lm = plain.language_model
  layers = [nnx.merge(nnx.graphdef(lm.layers), jax.tree.map(lambda w: w[i], nnx.state(lm.layers)))
            for i in range(n)]
  assert all(isinstance(layer, DecoderLayer) for layer in layers)
  x = plain.embed_inputs(ids)
  cos, sin = rope_tables(jnp.broadcast_to(jnp.arange(6), (2, 6)), t.dim_per_head, t.rope_theta)
  for layer in layers:
    x, _ = layer(x, cos, sin, Context(None, 0, lm.attention_impl))
  want = plain.lm_head(lm.norm(x)).astype(jnp.float32)
  np.testing.assert_array_equal(np.asarray(plain(ids).logits), np.asarray(want))


def test_checkpoint_of_one_subtree_per_layer_loads_stacked(tmp_path):
  """A checkpoint saved before the layers were stacked (format pgen_jax.janus/1, language_model/layers/<i>/...)
  loads into the stacked layout with every value in place."""
  import json
  import orbax.checkpoint as ocp
  from pgen_jax.models import save_janus
  model = Janus(tiny(), nnx.Rngs(3))
  save_janus(model, tmp_path / "ck")
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  layers = {i: jax.tree.map(lambda x: np.asarray(x[i]), pure["language_model"]["layers"]) for i in range(2)}
  pure["language_model"]["layers"] = layers  # as an nnx.List of layers held them
  params = (tmp_path / "old" / "params").resolve()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(params, pure)
    ckptr.wait_until_finished()
  meta = json.loads((tmp_path / "ck" / "pgen_config.json").read_text())
  (tmp_path / "old" / "pgen_config.json").write_text(json.dumps({**meta, "format": "pgen_jax.janus/1"}))
  back = load_janus(tmp_path / "old")
  np.testing.assert_array_equal(np.asarray(back.language_model.layers.mlp.down_proj.kernel[...][1]),
                                layers[1]["mlp"]["down_proj"]["kernel"])
  for a, b in zip(jax.tree.leaves(nnx.state(back, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
