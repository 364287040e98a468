"""The frozen image tokenizer's ids of every item's generation target, computed once before SFT.

SFT's targets are items of the store, and the VQ model is frozen there: tokenizing each item once
(sft.pretokenize) takes the VQ encoder out of every training step: 5% of a CPU demo step, 8% of the
FLOPs of a Janus-Pro-1B step at 64 posters of 384px (docs/benchmarks.md). Batches then carry `target_tokens` in place of the `target` images.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from pgen_jax.data.pipeline import item_chunks, num_items
from pgen_jax.models.janus import Janus, from_uint8, map_chunks


class ItemTokens:
  """item id -> its target's VQ ids (n_img,) int32, for every item of the prepared store."""

  def __init__(self, tokens: np.ndarray, item_ids: np.ndarray):
    self.tokens = tokens
    self._row = {int(i): r for r, i in enumerate(item_ids)}

  @classmethod
  def build(cls, cfg, model: Janus, chunk: int = 64) -> "ItemTokens":
    graphdef, state = nnx.split(model.vqmodel)  # passed in, not closed over: no weights baked into the program
    encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(from_uint8(x)))
    tokens, ids, total, start, last = [], [], num_items(cfg), time.time(), time.time()
    for images, chunk_ids in item_chunks(cfg, chunk):
      tokens.append(map_chunks(lambda x: encode(state, x), images, chunk).astype(np.int32))
      ids.append(chunk_ids)
      if time.time() - last > 10:
        done, spent = sum(map(len, ids)), time.time() - start
        logging.info("tokenizing the items' targets: %d/%d, ETA %.0f s", done, total, spent * (total - done) / done)
        last = time.time()
    out = cls(np.concatenate(tokens), np.concatenate(ids))
    logging.info("tokenized the %d items' targets once for SFT in %.1f s", len(out.tokens), time.time() - start)
    return out

  def __call__(self, item_ids) -> np.ndarray:
    """(B,) item ids -> (B, n_img) their targets' tokens."""
    try:
      return self.tokens[[self._row[int(i)] for i in item_ids]]
    except KeyError as e:
      raise ValueError(f"item {e.args[0]} is not in the prepared store's items: was the store rebuilt "
                       f"after this run started?") from None

  def of_targets(self, raw: dict) -> np.ndarray:
    """(B, n_img) the tokens of a raw loader batch's targets: item_ids holds history, target, future."""
    return self(np.asarray(raw["item_ids"])[:, np.shape(raw["history"])[1]])

  def replace_target(self, batch: dict, raw: dict) -> dict:
    """A prompter batch with `target_tokens` for the raw loader batch's target item in place of the
    `target` images."""
    out = {k: v for k, v in batch.items() if k != "target"}
    out["target_tokens"] = self.of_targets(raw)
    return out
