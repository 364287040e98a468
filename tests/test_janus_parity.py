"""Our Janus against transformers' JanusForConditionalGeneration, loaded through our HF loader."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_janus import SIZES, hf_model
from pgen_jax.models import load_janus, make_mesh

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(SIZES))
def pair(request, tmp_path_factory):
  hf = hf_model(seed=3, **SIZES[request.param])
  path = tmp_path_factory.mktemp(request.param)
  hf.save_pretrained(path)
  ours = load_janus(path, mesh=make_mesh(devices=[__import__("jax").devices()[0]]))
  return hf, ours


def images(n, size, seed):
  g = torch.Generator().manual_seed(seed)
  return torch.rand((n, 3, size, size), generator=g) * 2 - 1  # NCHW in [-1, 1]


def nhwc(x: torch.Tensor):
  return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def multimodal_prompts(cfg, rng):
  """Two prompts of equal length: the first holds two images, the second one image."""
  n, img, vocab = cfg.vision_config.num_image_tokens, cfg.image_token_id, cfg.text_config.vocab_size
  text = lambda k: list(rng.integers(3, vocab - 1, size=k))
  a = [1] + text(4) + [img] * n + text(3) + [img] * n + text(2)
  b = [1] + text(2) + [img] * n + text(len(a) - n - 3)
  return np.array([a, b])


def test_text_logits_with_images(pair):
  hf, ours = pair
  ids = multimodal_prompts(hf.config, np.random.default_rng(0))
  px = images(3, hf.config.vision_config.image_size, seed=1)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), pixel_values=px).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids), nhwc(px)).logits)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
  # The images matter: other pixels give other logits after the first placeholder.
  other = np.asarray(ours(jnp.asarray(ids), nhwc(images(3, hf.config.vision_config.image_size, 9))).logits)
  assert np.abs(other - got)[:, -1].max() > 1e-3


def test_padding_mask(pair):
  hf, ours = pair
  ids = multimodal_prompts(hf.config, np.random.default_rng(1))
  mask = np.ones_like(ids)
  mask[1, :3] = 0  # left padding in the second row
  px = images(3, hf.config.vision_config.image_size, seed=2)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), pixel_values=px, attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids), nhwc(px), attention_mask=jnp.asarray(mask)).logits)
  np.testing.assert_allclose(got[mask == 1], ref[mask == 1], atol=TOL, rtol=0)


def test_generation_head_logits(pair):
  hf, ours = pair
  rng = np.random.default_rng(2)
  prompt = rng.integers(3, hf.config.text_config.vocab_size - 1, size=(2, 7))
  tokens = rng.integers(0, hf.config.vq_config.num_embeddings, size=(2, 5))
  with torch.no_grad():
    emb = torch.cat([hf.get_input_embeddings()(torch.tensor(prompt)),
                     hf.prepare_embeddings_for_image_generation(torch.tensor(tokens))], dim=1)
    hidden = hf.model.language_model(inputs_embeds=emb).last_hidden_state
    ref = hf.model.generation_head(hidden).numpy()
  emb = jnp.concatenate([ours.language_model.embed_tokens(jnp.asarray(prompt)),
                         ours.prepare_embeddings_for_image_generation(jnp.asarray(tokens))], axis=1)
  got = np.asarray(ours.image_logits(ours(inputs_embeds=emb).hidden_states))
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_vq_decode(pair):
  hf, ours = pair
  n = hf.config.vision_config.num_image_tokens
  tokens = np.random.default_rng(3).integers(0, hf.config.vq_config.num_embeddings, size=(2, n))
  with torch.no_grad():
    ref = hf.decode_image_tokens(torch.tensor(tokens)).numpy()  # (B, H, W, C)
  got = np.asarray(ours.decode_image_tokens(jnp.asarray(tokens)))
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_vq_encode_uses_l2_normalised_rule(pair):
  hf, ours = pair
  px = images(2, hf.config.vision_config.image_size, seed=4)
  vq = hf.model.vqmodel
  with torch.no_grad():
    z = vq.quant_conv(vq.encoder(px)).permute(0, 2, 3, 1).reshape(2, -1, hf.config.vq_config.embed_dim)
    z = F.normalize(z, dim=-1)
    book = F.normalize(vq.quantize.embedding.weight, dim=-1)
    dist = (z ** 2).sum(-1, keepdim=True) + (book ** 2).sum(-1) - 2 * z @ book.T
    ref = dist.argmin(-1).numpy()
  got = np.asarray(ours.get_image_tokens(nhwc(px)))
  np.testing.assert_array_equal(got, ref)


def test_placeholder_count_must_match(pair):
  hf, ours = pair
  ids = multimodal_prompts(hf.config, np.random.default_rng(0))
  with pytest.raises(ValueError, match="placeholder"):
    ours(jnp.asarray(ids), nhwc(images(2, hf.config.vision_config.image_size, 1)))


def test_tied_checkpoint_and_other_activations_load(tmp_path):
  """transformers' JanusConfig defaults to tied embeddings (lm_head then not stored) and configs may
  name another GELU; both still compute what transformers computes."""
  from hf_janus import hf_config
  import transformers as T
  cfg = hf_config()
  cfg.tie_word_embeddings = True
  cfg.text_config.tie_word_embeddings = True
  cfg.vision_config.hidden_act = "gelu_pytorch_tanh"
  cfg.vq_config.hidden_act = "quick_gelu"
  torch.manual_seed(0)
  hf = T.JanusForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.1 * torch.randn(p.shape))
  assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
  hf.save_pretrained(tmp_path)
  ours = load_janus(tmp_path)
  ids = multimodal_prompts(hf.config, np.random.default_rng(4))
  px = images(3, 16, seed=5)
  tokens = np.random.default_rng(6).integers(0, 64, size=(2, 16))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), pixel_values=px).logits.numpy()
    ref_head = hf.model.generation_head(hf.prepare_embeddings_for_image_generation(torch.tensor(tokens))).numpy()
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids), nhwc(px)).logits), ref, atol=TOL, rtol=0)
  got_head = ours.image_logits(ours.prepare_embeddings_for_image_generation(jnp.asarray(tokens)))
  np.testing.assert_allclose(np.asarray(got_head), ref_head, atol=TOL, rtol=0)
