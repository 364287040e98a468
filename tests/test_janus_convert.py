"""converters.janus: HF <-> pgen_jax, the deepseek layout, and clear failures on bad checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers as T

from converters import janus as cli
from hf_janus import SIZES, hf_model
from pgen_jax.models import load_janus
from test_janus_parity import images, multimodal_prompts, nhwc

ONE = dict(mesh=None)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  hf_model(seed=5, **SIZES["gqa"]).save_pretrained(path)
  return path


def flat_params(model):
  from flax import nnx
  leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def assert_same_params(a, b):
  pa, pb = flat_params(a), flat_params(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def no_leftovers(dst: Path):
  assert not dst.exists()
  assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.tmp")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_identical(tmp_path, dtype):
  src = tmp_path / "hf"
  hf_model(seed=6, **SIZES["mha"]).to(dtype).save_pretrained(src)
  assert cli.main(["to-flax", str(src), str(tmp_path / "flax")]) == 0
  assert cli.main(["to-hf", str(tmp_path / "flax"), str(tmp_path / "back")]) == 0
  before = safetensors.torch.load_file(src / "model.safetensors")
  after = safetensors.torch.load_file(tmp_path / "back" / "model.safetensors")
  assert before.keys() == after.keys()
  for k in before:
    assert before[k].dtype == after[k].dtype == dtype, k
    assert torch.equal(before[k], after[k]), k


def test_transformers_loads_export_and_agrees(tmp_path, hf_dir):
  assert cli.main(["to-flax", str(hf_dir), str(tmp_path / "flax")]) == 0
  ours = load_janus(tmp_path / "flax")
  assert cli.main(["to-hf", str(tmp_path / "flax"), str(tmp_path / "back")]) == 0
  back = T.JanusForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
  assert back.config.tie_word_embeddings is False
  ids = multimodal_prompts(back.config, np.random.default_rng(7))
  px = images(3, back.config.vision_config.image_size, seed=8)
  with torch.no_grad():
    ref = back(input_ids=torch.tensor(ids), pixel_values=px).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids), nhwc(px)).logits), ref, atol=1e-4, rtol=0)


def test_sharded_index_and_own_checkpoint_load_the_same(tmp_path, hf_dir):
  hf = T.JanusForConditionalGeneration.from_pretrained(hf_dir)
  hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  a = load_janus(hf_dir)
  assert_same_params(a, load_janus(tmp_path / "sharded"))
  assert cli.main(["to-flax", str(tmp_path / "sharded"), str(tmp_path / "flax")]) == 0
  assert_same_params(a, load_janus(tmp_path / "flax"))


# ---- the original deepseek layout, made here by inverse-mapping a transformers checkpoint ----------

def to_deepseek(hf_sd: dict, cfg: T.JanusConfig) -> dict:
  out = {}
  tower = "vision_model.vision_tower."
  for k, v in hf_sd.items():
    if k == "lm_head.weight":
      out["language_model.lm_head.weight"] = v
    elif k.startswith("model.language_model."):
      out["language_model.model." + k[len("model.language_model."):]] = v
    elif k == "model.vision_model.embeddings.position_embedding.weight":
      out[tower + "pos_embed"] = v[None]
    elif k.startswith("model.vision_model.embeddings.patch_embedding."):
      out[tower + "patch_embed.proj." + k.rsplit(".", 1)[1]] = v
    elif k.startswith("model.vision_model.post_layernorm."):
      out[tower + "norm." + k.rsplit(".", 1)[1]] = v
    elif k.startswith("model.vision_model.encoder.layers."):
      rest = k[len("model.vision_model.encoder.layers."):]
      i, rest = rest.split(".", 1)
      rest = (rest.replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
              .replace("self_attn.projection_layer", "attn.proj"))
      if "self_attn.q_proj" in rest:
        kind = rest.rsplit(".", 1)[1]
        pre = f"model.vision_model.encoder.layers.{i}.self_attn."
        out[f"{tower}blocks.{i}.attn.qkv.{kind}"] = np.concatenate(
            [hf_sd[pre + f"{p}_proj.{kind}"] for p in "qkv"], axis=0)
      elif "self_attn.k_proj" in rest or "self_attn.v_proj" in rest:
        continue
      else:
        out[f"{tower}blocks.{i}.{rest}"] = v
    elif k.startswith(("model.aligner.", "model.generation_aligner.")):
      name = "aligner" if k.startswith("model.aligner.") else "gen_aligner"
      rest = k.split(".", 2)[2]
      if rest.startswith("fc1."):
        out[f"{name}.layers.0.{rest[4:]}"] = v
      else:
        j, kind = rest[len("hidden_layers."):].split(".")
        out[f"{name}.layers.{2 * (int(j) + 1)}.{kind}"] = v
    elif k.startswith("model.generation_head."):
      out["gen_head." + k[len("model.generation_head."):].replace("proj_out", "output_mlp_projector")] = v
    elif k.startswith("model.generation_embeddings."):
      out["gen_embed." + k.rsplit(".", 1)[1]] = v
    elif k.startswith("model.vqmodel."):
      rest = k[len("model.vqmodel."):]
      rest = (rest.replace("encoder.down.", "encoder.conv_blocks.").replace("decoder.up.", "decoder.conv_blocks.")
              .replace(".block.", ".res.").replace("mid.block_1", "mid.0").replace("mid.attn_1", "mid.1")
              .replace("mid.block_2", "mid.2"))
      out["gen_vision_model." + rest] = v
    else:
      raise AssertionError(f"unmapped {k}")
  # Tensors of the original release that Janus never uses.
  w = cfg.vision_config.hidden_size
  out[tower + "attn_pool.latent"] = np.zeros((1, 1, w), np.float32)
  out[tower + "attn_pool.q.weight"] = np.zeros((w, w), np.float32)
  out["gen_vision_model.quantize.codebook_used"] = np.zeros((cfg.vq_config.num_embeddings,), np.float32)
  return out


def deepseek_config(cfg: T.JanusConfig) -> dict:
  t = cfg.text_config
  return {
      "model_type": "multi_modality", "architectures": ["MultiModalityCausalLM"],
      "language_config": {"model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                          "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
                          "num_attention_heads": t.num_attention_heads,
                          "num_key_value_heads": t.num_key_value_heads, "head_dim": t.head_dim,
                          "max_position_embeddings": t.max_position_embeddings, "rms_norm_eps": t.rms_norm_eps,
                          "rope_theta": t.rope_parameters["rope_theta"]},
      "vision_config": {"cls": "CLIPVisionTower", "params": {"image_size": cfg.vision_config.image_size,
                                                            "model_name": "siglip_large_patch16_384"}},
      "aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "n_embed": t.hidden_size}},
      "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": cfg.vq_config.num_embeddings,
                                                      "n_embed": cfg.vq_config.embed_dim}},
      "gen_aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "n_embed": t.hidden_size}},
      "gen_head_config": {"cls": "vision_head", "params": {"image_token_embed": t.hidden_size,
                                                          "image_token_size": cfg.vq_config.num_embeddings,
                                                          "n_embed": t.hidden_size}},
      "image_token_id": cfg.image_token_id,
  }


def test_deepseek_layout_converts_to_the_same_parameters(tmp_path):
  # SigLIP-L has 16 heads; the deepseek config names the tower, its sizes come from the weights.
  hf = hf_model(seed=9, **{**SIZES["gqa"], "vision_hidden": 64, "vision_heads": 16})
  hf.save_pretrained(tmp_path / "hf")
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  (tmp_path / "ds").mkdir()
  (tmp_path / "ds" / "config.json").write_text(json.dumps(deepseek_config(hf.config)))
  safetensors.numpy.save_file(to_deepseek(sd, hf.config), tmp_path / "ds" / "model.safetensors")
  ours = load_janus(tmp_path / "ds")
  assert_same_params(load_janus(tmp_path / "hf"), ours)
  # And it computes what transformers computes.
  ids = multimodal_prompts(hf.config, np.random.default_rng(10))
  px = images(3, hf.config.vision_config.image_size, seed=11)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), pixel_values=px).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids), nhwc(px)).logits), ref, atol=1e-4, rtol=0)


# ---- bad checkpoints: a clear error naming keys and shapes, exit 1, nothing left at DST ------------

def _edit(sd):
  return {k: v.copy() for k, v in sd.items()}


def _missing(sd):
  sd = _edit(sd)
  del sd["model.language_model.norm.weight"]
  return sd, ["missing keys", "model.language_model.norm.weight", "[64]"]


def _unexpected(sd):
  sd = _edit(sd)
  sd["model.language_model.extra.weight"] = np.zeros((3, 5), np.float32)
  return sd, ["unexpected keys", "model.language_model.extra.weight", "[3, 5]"]


def _wrong_shape(sd):
  sd = _edit(sd)
  sd["lm_head.weight"] = np.zeros((320, 63), np.float32)
  return sd, ["wrong shape for lm_head.weight", "[320, 63]", "[320, 64]"]


def _wrong_dtype(sd):
  sd = _edit(sd)
  sd["model.aligner.fc1.bias"] = sd["model.aligner.fc1.bias"].astype(np.int32)
  return sd, ["wrong dtype for model.aligner.fc1.bias", "int32"]


@pytest.mark.parametrize("corrupt", [_missing, _unexpected, _wrong_shape, _wrong_dtype])
def test_bad_checkpoint_is_refused(tmp_path, hf_dir, capsys, corrupt):
  sd = safetensors.numpy.load_file(hf_dir / "model.safetensors")
  bad, expected = corrupt(sd)
  src = tmp_path / "bad"
  src.mkdir()
  (src / "config.json").write_text((hf_dir / "config.json").read_text())
  safetensors.numpy.save_file(bad, src / "model.safetensors")
  dst = tmp_path / "out"
  assert cli.main(["to-flax", str(src), str(dst)]) == 1
  err = capsys.readouterr().err
  for text in expected:
    assert text in err
  no_leftovers(dst)


def test_truncated_file_is_refused_by_the_cli(tmp_path, hf_dir):
  src = tmp_path / "bad"
  src.mkdir()
  (src / "config.json").write_text((hf_dir / "config.json").read_text())
  data = (hf_dir / "model.safetensors").read_bytes()
  (src / "model.safetensors").write_bytes(data[: len(data) - 1000])
  dst = tmp_path / "out"
  run = subprocess.run([sys.executable, "-m", "converters.janus", "to-flax", str(src), str(dst)],
                       capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode != 0
  assert "truncated" in run.stderr and "model.safetensors" in run.stderr
  no_leftovers(dst)


def test_bad_config_and_existing_output(tmp_path, hf_dir, capsys):
  src = tmp_path / "badcfg"
  src.mkdir()
  cfg = json.loads((hf_dir / "config.json").read_text())
  cfg["text_config"]["num_key_value_heads"] = 3
  (src / "config.json").write_text(json.dumps(cfg))
  assert cli.main(["to-flax", str(src), str(tmp_path / "out")]) == 1
  assert "num_key_value_heads" in capsys.readouterr().err
  no_leftovers(tmp_path / "out")
  (tmp_path / "taken").mkdir()
  assert cli.main(["to-flax", str(hf_dir), str(tmp_path / "taken")]) == 1
  assert "already exists" in capsys.readouterr().err
  assert cli.main(["to-hf", str(hf_dir), str(tmp_path / "x")]) == 1
  assert "not a pgen_jax checkpoint" in capsys.readouterr().err
