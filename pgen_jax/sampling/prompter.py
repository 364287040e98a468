"""Loader batches -> the sampler's and the train steps' inputs: prompts built with the configured
template and tokenizer (Prompter), and the sampler's PromptBatch from them (prompt_batch)."""

from __future__ import annotations

import numpy as np

from pgen_jax.models.janus import from_uint8
from pgen_jax.sampling.prompts import HistoryItem, PromptBatch, PromptTemplate, build_batch, max_prompt_len
from pgen_jax.sampling.tokenizers import load_tokenizer


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
    x = {"ids": pb.ids, "uncond": pb.uncond, "mask": pb.mask, "uncond_mask": uncond_mask,
         "history": np.asarray(batch["history"])}
    if "target" in batch:  # training batches; a history to generate from has none
      x["target"] = np.asarray(batch["target"])
    return x


def prompt_batch(x: dict[str, np.ndarray], uncond: str) -> PromptBatch:
  """The sampler's input from a Prompter output; history images scaled to [-1, 1]."""
  return PromptBatch(ids=x["ids"], mask=x["mask"], uncond=x["uncond"], uncond_mask=x.get("uncond_mask"),
                     images=from_uint8(x["history"].reshape(-1, *x["history"].shape[2:])),
                     uncond_has_images=uncond == "keep_images")
