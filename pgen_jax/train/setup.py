"""What every stage builds from the config: mesh, model, tokenizer, prompts, device batches."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.models import Janus, load_janus, make_mesh, place_on_mesh, preset
from pgen_jax.models.sharding import BATCH
from pgen_jax.sampling.prompts import HistoryItem, PromptBatch, PromptTemplate, build_batch, max_prompt_len
from pgen_jax.sampling.tokenizers import load_tokenizer


def mesh_from_config(cfg):
  return make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def model_from_config(cfg, mesh, checkpoint: str | Path | None = None) -> Janus:
  """The configured Janus on the mesh: from `checkpoint` (default model.checkpoint) or a seeded init."""
  dtype, param_dtype = jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)
  path = checkpoint or cfg.model.checkpoint
  if path:
    model = load_janus(path, mesh=mesh, dtype=dtype, param_dtype=param_dtype)
  else:
    logging.warning("model.checkpoint is empty: using a randomly initialised %s (seed %d)", cfg.model.preset,
                    cfg.seed)
    model = place_on_mesh(Janus(preset(cfg.model.preset), nnx.Rngs(cfg.seed), dtype=dtype,
                                param_dtype=param_dtype), mesh)
  model.language_model.attention_impl = cfg.model.attention
  return model


def trained_checkpoint(cfg, stages=("grpo", "sft")) -> Path | None:
  """The newest finished training result, <workdir>/<stage>/final for the first of `stages` that has one."""
  for stage in stages:
    final = Path(cfg.workdir) / stage / "final"
    if final.exists():
      return final
  return None


def template_from_config(cfg) -> PromptTemplate:
  return PromptTemplate(prompt=cfg.prompt.template, item=cfg.prompt.item)


class Prompter:
  """Loader batches -> fixed-shape numpy model inputs (prompt ids, CFG rows, mask, images)."""

  def __init__(self, cfg, model_config):
    self.tok, self.special = load_tokenizer(cfg.model.tokenizer, model_config, cfg.model.checkpoint)
    self.template = template_from_config(cfg)
    self.n_img = model_config.num_image_tokens
    self.max_text = cfg.prompt.max_text_tokens
    self.uncond = cfg.prompt.uncond
    self.uncond_pads = cfg.prompt.uncond_pads
    self.length = max_prompt_len(self.tok, cfg.data.history_len, self.n_img, self.template, self.max_text)
    if self.length + self.n_img > model_config.text.max_position_embeddings:
      raise ValueError(f"prompt.max_text_tokens / data.history_len: prompts of up to {self.length} tokens plus "
                       f"{self.n_img} image tokens exceed the model's {model_config.text.max_position_embeddings} "
                       "positions")

  def histories(self, batch) -> list[list[HistoryItem]]:
    return [[HistoryItem(img, str(text)) for img, text in zip(imgs, texts)]
            for imgs, texts in zip(batch["history"], batch["history_text"])]

  def __call__(self, batch) -> dict[str, np.ndarray]:
    pb = build_batch(self.histories(batch), self.tok, self.special, self.n_img, template=self.template,
                     uncond=self.uncond, uncond_pads=self.uncond_pads, pad_to=self.length,
                     max_text_tokens=self.max_text)
    uncond_mask = pb.mask if pb.uncond_mask is None else pb.uncond_mask
    return {"ids": pb.ids, "uncond": pb.uncond, "mask": pb.mask, "uncond_mask": uncond_mask,
            "history": np.asarray(batch["history"]),
            "target": np.asarray(batch["target"])}


def prompt_batch(x: dict[str, np.ndarray], uncond: str) -> PromptBatch:
  """The sampler's input from a Prompter output; history images scaled to [-1, 1]."""
  return PromptBatch(ids=x["ids"], mask=x["mask"], uncond=x["uncond"], uncond_mask=x.get("uncond_mask"),
                     images=x["history"].reshape(-1, *x["history"].shape[2:]).astype(np.float32) / 127.5 - 1.0,
                     uncond_has_images=uncond == "keep_images")


def to_device(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Host-local batch -> global arrays split over the mesh's batch axes."""
  def put(x):
    spec = P(BATCH) if x.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0 else P()
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.ascontiguousarray(x))
  return {k: put(v) for k, v in batch.items()}
