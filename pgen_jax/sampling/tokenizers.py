"""Tokenizers for prompts: the checkpoint's own (transformers), or bytes for tiny models.

The byte tokenizer lets the CPU demo and tests run with no download: id = 3 + byte, 0/1/2 are
pad/bos/eos and the image tags take the top of the vocabulary, as in `models.config.tiny()`.
"""

from __future__ import annotations

import dataclasses

from pgen_jax.sampling.prompts import SpecialTokens


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  vocab_size: int
  image_token_id: int

  def __post_init__(self):
    if self.vocab_size < 3 + 256 + 3:
      raise ValueError(f"a byte tokenizer needs a vocabulary of at least 262, the model has {self.vocab_size}")

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return [3 + b for b in text.encode("utf-8")]

  def decode(self, ids) -> str:
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")

  @property
  def special(self) -> SpecialTokens:
    top = self.vocab_size - 1
    return SpecialTokens(bos=1, pad=0, boi=top - 2, eoi=top - 1, image=self.image_token_id)


def load_tokenizer(name: str, model_config, checkpoint: str = ""):
  """(tokenizer, SpecialTokens): "bytes", or a transformers tokenizer directory (default: the checkpoint)."""
  if name == "bytes":
    tok = ByteTokenizer(model_config.text.vocab_size, model_config.image_token_id)
    return tok, tok.special
  from transformers import AutoTokenizer  # lazy: transformers may import torch; the byte tokenizer needs none
  path = name or checkpoint
  if not path:
    raise ValueError("model.tokenizer: empty and no model.checkpoint to read a tokenizer from")
  tok = AutoTokenizer.from_pretrained(path)
  return tok, SpecialTokens.from_tokenizer(tok)
