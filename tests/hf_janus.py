"""Tiny random transformers Janus models, built inside the tests (never stored fixtures)."""

from __future__ import annotations

import math

import torch
import transformers as T


def hf_config(*, hidden=64, heads=4, kv_heads=2, layers=2, vocab=320, head_dim=None, image_size=16,
              patch=4, vision_hidden=32, vision_heads=2, vision_layers=2, vq_base=32, res_blocks=1,
              codebook=64, latent=32, embed_dim=8, rope_theta=10000.0) -> T.JanusConfig:
  levels = int(math.log2(patch)) + 1  # VQ downsampling 2**(levels-1) must equal the patch size
  text = T.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 24,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=head_dim, max_position_embeddings=512, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
  vision = T.JanusVisionConfig(hidden_size=vision_hidden, num_hidden_layers=vision_layers,
                               num_attention_heads=vision_heads, image_size=image_size, patch_size=patch,
                               projection_dim=hidden, num_image_tokens=(image_size // patch) ** 2)
  vq = T.JanusVQVAEConfig(embed_dim=embed_dim, num_embeddings=codebook, latent_channels=latent,
                          base_channels=vq_base, channel_multiplier=[1] + [2] * (levels - 1),
                          num_res_blocks=res_blocks, projection_dim=hidden, image_token_embed_dim=hidden)
  return T.JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=vocab - 1,
                       tie_word_embeddings=False)


# Two sizes: grouped-query attention, and full multi-head attention with head_dim != hidden/heads,
# deeper VQ and more res blocks.
SIZES = {
    "gqa": dict(),
    "mha": dict(hidden=96, heads=4, kv_heads=4, head_dim=16, layers=3, vocab=500, image_size=32, patch=8,
                vision_hidden=64, vision_heads=4, res_blocks=2, codebook=96, latent=64, rope_theta=500.0),
}


def hf_model(seed: int = 0, **kw) -> T.JanusForConditionalGeneration:
  """A tiny Janus with every parameter random (norm scales around 1), in eval mode, fp32."""
  torch.manual_seed(seed)
  model = T.JanusForConditionalGeneration(hf_config(**kw)).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      elif p.ndim == 1:
        p.copy_(0.1 * noise)
      elif "embed" in name and p.ndim == 2:
        p.copy_(noise)
      else:
        fan_in = p[0].numel()
        p.copy_(noise / math.sqrt(fan_in))
  return model
