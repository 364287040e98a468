"""LoRA exports against transformers and peft: the adapters alone in PEFT's format, loaded by peft onto
transformers' Janus, and the adapters merged into a transformers Janus directory (tiny random models, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from hf_janus import hf_model
from pgen_jax.models import load_janus, make_mesh
from pgen_jax.models import lora
from pgen_jax.models.hf import export_hf, export_peft

TOL = 1e-4  # ours against torch (tests/test_janus_parity.py's tolerance)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """transformers' tiny Janus, and ours loaded from it with random (non-zero) adapters on every projection."""
  base_dir = tmp_path_factory.mktemp("base")
  hf_model(seed=3).save_pretrained(base_dir)
  ours = load_janus(base_dir, mesh=make_mesh(devices=[jax.devices()[0]]))
  adapted = lora.apply_lora(ours, lora.LoraConfig(rank=4, alpha=8.0))
  rng = np.random.default_rng(0)
  for _, linear in lora.adapted_modules(adapted):
    b = linear.kernel_lora_b
    b[...] = jnp.asarray(0.05 * rng.standard_normal(b.shape), b.dtype)
  return base_dir, ours, adapted


def prompt(cfg):
  rng = np.random.default_rng(1)
  n, img = cfg.vision_config.num_image_tokens, cfg.image_token_id
  ids = [1] + list(rng.integers(3, cfg.text_config.vocab_size - 1, 5)) + [img] * n + [7, 8]
  px = torch.rand((1, 3, cfg.vision_config.image_size, cfg.vision_config.image_size),
                  generator=torch.Generator().manual_seed(2)) * 2 - 1
  return np.array([ids]), px


def ours_logits(model, ids, px):
  return np.asarray(model(jnp.asarray(ids), jnp.asarray(px.permute(0, 2, 3, 1).numpy())).logits)


def test_peft_loads_our_adapters_onto_transformers_janus(pair, tmp_path):
  base_dir, ours, adapted = pair
  export_peft(adapted, tmp_path / "adapter", base_model=str(base_dir))
  hf = hf_model(seed=3)
  ids, px = prompt(hf.config)
  with torch.no_grad():
    base_ref = hf(input_ids=torch.tensor(ids), pixel_values=px).logits.numpy()
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ref = peft_model(input_ids=torch.tensor(ids), pixel_values=px).logits.numpy()
  got = ours_logits(adapted, ids, px)
  assert np.abs(ref - base_ref).max() > 1e-2  # the adapters change the output
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
  # every projection of every layer was adapted, as the default target says
  layers = hf.config.text_config.num_hidden_layers
  assert len(peft_model.peft_config["default"].target_modules) == 7 * layers


def test_merged_export_loads_in_transformers_and_equals_the_adapted_model(pair, tmp_path):
  _, ours, adapted = pair
  merged = lora.merge(adapted)
  export_hf(merged, tmp_path / "merged")
  import transformers as T
  hf = T.JanusForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
  ids, px = prompt(hf.config)
  got = ours_logits(adapted, ids, px)
  np.testing.assert_allclose(ours_logits(merged, ids, px), got, atol=1e-5, rtol=0)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), pixel_values=px).logits.numpy()
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
  assert np.abs(got - ours_logits(ours, ids, px)).max() > 1e-2
