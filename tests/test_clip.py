"""Flax CLIP against transformers' CLIPModel (tiny random, built here), open_clip's key layout, the
open_clip tokenization rule and the in-jit preprocessing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers as T
from PIL import Image

from pgen_jax.rewards.hf import load_clip, tokenize
from pgen_jax.models import make_mesh
from pgen_jax.rewards.image_ops import CLIP_MEAN, CLIP_STD, preprocess
from pgen_jax.rewards.similarity import cosine as similarity


def hf_clip(act="quick_gelu", eos=2, seed=0):
  torch.manual_seed(seed)
  cfg = T.CLIPConfig(
      text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=16, hidden_act=act, eos_token_id=eos, bos_token_id=97, pad_token_id=0),
      vision_config=dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                         patch_size=6, hidden_act=act),
      projection_dim=24)
  model = T.CLIPModel(cfg).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      p.copy_(1 + 0.2 * noise if ("norm" in name and name.endswith("weight")) else
              0.1 * noise if p.ndim <= 1 else noise / np.sqrt(p[0].numel()))
  return model


def one_device():
  return make_mesh(devices=jax.devices()[:1])


def ids_with_eot(rng, eot):
  ids = rng.integers(1, 90, (3, 16)).astype(np.int64)
  for row, end in zip(ids, (5, 16, 9)):
    row[end - 1] = eot
    row[end:] = 0
  return ids


@pytest.mark.parametrize("act,eos", [("quick_gelu", 2), ("gelu", 98)])
def test_features_equal_transformers(tmp_path, act, eos):
  hf = hf_clip(act, eos)
  hf.save_pretrained(tmp_path)
  ours = load_clip(tmp_path, mesh=one_device())
  rng = np.random.default_rng(0)
  px = rng.normal(size=(2, 3, 30, 30)).astype(np.float32)
  ids = ids_with_eot(rng, 98)
  with torch.no_grad():
    ref_img = hf.get_image_features(pixel_values=torch.tensor(px)).pooler_output.numpy()
    ref_txt = hf.get_text_features(input_ids=torch.tensor(ids)).pooler_output.numpy()
  img = np.asarray(ours.get_image_features(jnp.asarray(px.transpose(0, 2, 3, 1))))
  txt = np.asarray(ours.get_text_features(jnp.asarray(ids)))
  np.testing.assert_allclose(img, ref_img, atol=1e-4, rtol=0)
  np.testing.assert_allclose(txt, ref_txt, atol=1e-4, rtol=0)
  cos = torch.nn.functional.cosine_similarity(torch.tensor(ref_img), torch.tensor(ref_txt[:2]))
  np.testing.assert_allclose(np.asarray(similarity(img, txt[:2])), 100 * cos.numpy(), atol=1e-3)


def to_open_clip(sd: dict, cfg) -> dict:
  """transformers CLIPModel keys -> open_clip's (fused attention, (in, out) projections)."""
  out = {}
  for k, v in sd.items():
    if k.endswith("position_ids"):
      continue
    if k == "visual_projection.weight":
      out["visual.proj"] = v.T.copy()
      continue
    if k == "text_projection.weight":
      out["text_projection"] = v.T.copy()
      continue
    if k == "logit_scale":
      out[k] = v
      continue
    m = k
    for a, b in [("vision_model.embeddings.patch_embedding.", "visual.conv1."),
                 ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
                 ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
                 ("vision_model.pre_layrnorm.", "visual.ln_pre."), ("vision_model.post_layernorm.", "visual.ln_post."),
                 ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
                 ("text_model.encoder.layers.", "transformer.resblocks."),
                 ("text_model.embeddings.token_embedding.", "token_embedding."),
                 ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
                 ("text_model.final_layer_norm.", "ln_final."), (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."),
                 (".self_attn.out_proj.", ".attn.out_proj."), (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj.")]:
      m = m.replace(a, b)
    if ".self_attn.q_proj." in m:
      kind = m.rsplit(".", 1)[1]
      pre = k.split(".self_attn.")[0] + ".self_attn."
      out[m.split(".self_attn.")[0] + f".attn.in_proj_{kind}"] = np.concatenate(
          [sd[pre + f"{p}_proj.{kind}"] for p in "qkv"], 0)
    elif ".self_attn." in m:
      continue
    else:
      out[m] = v
  out["attn_mask"] = np.zeros((16, 16), np.float32)  # a buffer open_clip saves
  return out


def test_open_clip_layout_loads_the_same_model(tmp_path):
  hf = hf_clip("gelu", 2, seed=3)
  hf.save_pretrained(tmp_path / "hf")
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  (tmp_path / "oc").mkdir()
  safetensors.numpy.save_file(to_open_clip(sd, hf.config), tmp_path / "oc" / "open_clip_model.safetensors")
  (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
      "embed_dim": 24, "quick_gelu": False,
      "vision_cfg": {"image_size": 30, "layers": 2, "width": 40, "patch_size": 6, "head_width": 10,
                     "mlp_ratio": 1.4},
      "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 1.5}}}))
  a, b = load_clip(tmp_path / "hf", mesh=one_device()), load_clip(tmp_path / "oc", mesh=one_device())
  px = jnp.asarray(np.random.default_rng(1).normal(size=(2, 30, 30, 3)).astype(np.float32))
  ids = jnp.asarray(ids_with_eot(np.random.default_rng(2), 98))
  np.testing.assert_array_equal(np.asarray(a.get_image_features(px)), np.asarray(b.get_image_features(px)))
  np.testing.assert_array_equal(np.asarray(a.get_text_features(ids)), np.asarray(b.get_text_features(ids)))


@pytest.fixture
def clip_tokenizer(tmp_path):
  vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
  vocab.update({c + "</w>": 26 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
  vocab.update({"ca": 52, "cat</w>": 53, "do": 54, "dog</w>": 55, "<|startoftext|>": 56, "<|endoftext|>": 57})
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  (tmp_path / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
  return T.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


def test_tokenize_follows_open_clip(clip_tokenizer):
  ids = tokenize(["A cat", "dog " * 10], clip_tokenizer, context_length=6)
  # <start> a cat <end>, zero-padded; the long one is cut with <end> kept last.
  np.testing.assert_array_equal(ids, [[56, 26, 53, 57, 0, 0], [56, 55, 55, 55, 55, 57]])


def test_preprocess_matches_pil_bicubic_resize_and_crop():
  rng = np.random.default_rng(0)
  img = (rng.uniform(0, 1, (1, 40, 60, 3)) * 255).astype(np.uint8)
  img = np.asarray(Image.fromarray(img[0]).resize((60, 40), Image.BILINEAR))[None]  # smooth it a little
  got = np.asarray(preprocess(jnp.asarray(img), 20, 20, CLIP_MEAN, CLIP_STD))
  ref = np.asarray(Image.fromarray(img[0]).resize((30, 20), Image.BICUBIC), np.float32)[:, 5:25] / 255.0
  ref = (ref - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
  assert got.shape == (1, 20, 20, 3)
  assert np.abs(got[0] - ref).max() * 0.27 < 4 / 255  # within a few grey levels of PIL


def test_bf16_weights_stay_close(tmp_path):
  hf = hf_clip("gelu", 2, seed=5)
  hf.save_pretrained(tmp_path)
  f32 = load_clip(tmp_path, mesh=one_device())
  b16 = load_clip(tmp_path, mesh=one_device(), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  assert b16.visual_projection.kernel[...].dtype == jnp.bfloat16
  px = jnp.asarray(np.random.default_rng(4).normal(size=(2, 30, 30, 3)).astype(np.float32))
  a, b = f32.get_image_features(px), b16.get_image_features(px)
  assert b.dtype == jnp.float32
  assert float(jnp.min(similarity(a, b))) > 99.0  # cosine > 0.99
