"""User histories -> Janus generation prompts (token ids with image placeholders) and CFG rows.

A history of k-1 items, each an image and a text (MovieLens: "Title (Year) | Genres"; PixelRec:
title and tags), is rendered with a configurable template into Janus's chat format; each history
image becomes <begin_of_image> + num_image_tokens x <image_placeholder> + <end_of_image>, to be filled
by the understanding encoder. The prompt ends with the assistant turn and <begin_of_image>.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Protocol, Sequence

import numpy as np

from pgen_jax.models.janus import from_uint8

IMAGE = "{image}"


@dataclasses.dataclass(frozen=True)
class HistoryItem:
  image: np.ndarray | None  # (H, W, 3) uint8 at the understanding encoder's size, or None
  text: str


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """`prompt` holds {history}; `item` holds {image} and {text}. Defaults follow Janus's chat format."""
  prompt: str = ("<|User|>: Here are the items this user liked, oldest first:\n{history}"
                 "Generate the image of the next item this user will like.\n\n<|Assistant|>:")
  item: str = "{image}{text}\n"


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  bos: int
  pad: int
  boi: int  # <begin_of_image>
  eoi: int  # <end_of_image>
  image: int  # <image_placeholder>

  @classmethod
  def from_tokenizer(cls, tok) -> "SpecialTokens":
    """From a transformers tokenizer of Janus (the pad id differs between 1B and 7B: read it)."""
    def tid(name):
      i = tok.convert_tokens_to_ids(name)
      if i is None or i == tok.unk_token_id:
        raise ValueError(f"tokenizer has no {name!r} token; is it a Janus tokenizer?")
      return i
    pad = tok.pad_token_id if tok.pad_token_id is not None else tid("<｜▁pad▁｜>")
    return cls(bos=tok.bos_token_id, pad=pad, boi=tid("<begin_of_image>"), eoi=tid("<end_of_image>"),
               image=tid("<image_placeholder>"))


class Tokenizer(Protocol):
  def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def _segments(template: str) -> list[tuple[str, str | None]]:
  """(literal, field) pairs of a format string: field is 'image', 'text', 'history' or None."""
  return [(lit, field) for lit, field, _, _ in string.Formatter().parse(template)]


def prompt_ids(history: Sequence[HistoryItem], tok: Tokenizer, special: SpecialTokens,
               num_image_tokens: int, template: PromptTemplate = PromptTemplate(),
               max_text_tokens: int | None = None) -> tuple[list[int], list[np.ndarray]]:
  """Token ids of one prompt (BOS first, <begin_of_image> last) and its images in order.

  Literal template text and each item text are tokenized separately (item texts cut to
  max_text_tokens), so the prompt length has a fixed upper bound, see `max_prompt_len`.
  """
  if "{history}" not in template.prompt:
    raise ValueError("PromptTemplate.prompt must contain {history}")
  ids, images = [special.bos], []

  def literal(text):
    if text:
      ids.extend(tok.encode(text, add_special_tokens=False))

  for lit, field in _segments(template.prompt):
    literal(lit)
    if field != "history":
      continue
    for item in history:
      for ilit, ifield in _segments(template.item):
        literal(ilit)
        if ifield == "text":
          ids.extend(list(tok.encode(item.text, add_special_tokens=False))[:max_text_tokens])
        elif ifield == "image" and item.image is not None:
          ids.extend([special.boi] + [special.image] * num_image_tokens + [special.eoi])
          images.append(item.image)
  return ids + [special.boi], images


def max_prompt_len(tok: Tokenizer, history_len: int, num_image_tokens: int, template: PromptTemplate,
                   max_text_tokens: int) -> int:
  """The longest prompt `prompt_ids` can make for histories of `history_len` items with images."""
  enc = lambda t: len(tok.encode(t, add_special_tokens=False)) if t else 0
  per_item = sum(enc(lit) for lit, _ in _segments(template.item))
  per_item += max_text_tokens * ("{text}" in template.item) + (num_image_tokens + 2) * ("{image}" in template.item)
  return 2 + sum(enc(lit) for lit, _ in _segments(template.prompt)) + history_len * per_item


def uncond_ids(ids: np.ndarray, mask: np.ndarray, special: SpecialTokens, mode: str = "official") -> np.ndarray:
  """The unconditional CFG rows of left-padded prompts.

  official: every token between the first real token and the final <begin_of_image> becomes pad
    (this also drops the history images). keep_images: only text tokens become pad; image blocks
    stay, so the unconditional branch still sees the history images.
  """
  out = ids.copy()
  first = mask.argmax(axis=1)
  pos = np.arange(ids.shape[1])[None]
  inside = (pos > first[:, None]) & (pos < ids.shape[1] - 1)
  if mode == "official":
    blank = inside
  elif mode == "keep_images":
    blank = inside & ~np.isin(ids, [special.boi, special.eoi, special.image])
  else:
    raise ValueError(f"uncond mode {mode!r} unknown; use 'official' or 'keep_images'")
  out[blank] = special.pad
  return out


def compact_rows(ids: np.ndarray, mask: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded rows holding only the tokens mask keeps, as narrow as the longest such row."""
  width = max(int(mask.sum(axis=1).max()), 1)
  out = np.full((ids.shape[0], width), pad, ids.dtype)
  out_mask = np.zeros((ids.shape[0], width), mask.dtype)
  for i in range(ids.shape[0]):
    kept = ids[i][mask[i].astype(bool)]
    out[i, width - len(kept):] = kept
    out_mask[i, width - len(kept):] = 1
  return out, out_mask


@dataclasses.dataclass
class PromptBatch:
  ids: np.ndarray       # (B, T) left-padded, conditional rows
  mask: np.ndarray      # (B, T) 1 for real tokens
  uncond: np.ndarray    # (B, T) unconditional rows
  images: np.ndarray    # (N, H, W, 3) float32 in [-1, 1], all history images in prompt order
  uncond_has_images: bool
  # Which tokens the unconditional rows attend (None: the same as `mask`, the blanked tokens
  # included, as transformers' generate does). uncond_pads="drop" keeps only their real tokens.
  uncond_mask: np.ndarray | None = None

  def uncond_rows(self) -> tuple[np.ndarray, np.ndarray]:
    """The unconditional rows at their true length: only the tokens they attend, left-padded."""
    mask = self.mask if self.uncond_mask is None else self.uncond_mask
    return compact_rows(self.uncond, mask)


def build_batch(histories: Sequence[Sequence[HistoryItem]], tok: Tokenizer, special: SpecialTokens,
                num_image_tokens: int, *, template: PromptTemplate = PromptTemplate(),
                uncond: str = "official", uncond_pads: str = "attend", pad_to: int | None = None,
                max_text_tokens: int | None = None) -> PromptBatch:
  """uncond_pads: "attend" (the blanked tokens stay in the unconditional row, as the official code
  and transformers do) or "drop" (the row holds its real tokens only: BOS and <begin_of_image>, plus
  the image blocks with keep_images; a 3k-token history costs it nothing)."""
  rows, images = [], []
  for h in histories:
    ids, imgs = prompt_ids(h, tok, special, num_image_tokens, template, max_text_tokens)
    rows.append(ids)
    images += imgs
  length = max(len(r) for r in rows)
  if pad_to is not None:
    if pad_to < length:
      raise ValueError(f"longest prompt has {length} tokens, more than pad_to={pad_to}")
    length = pad_to
  ids = np.full((len(rows), length), special.pad, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    ids[i, length - len(r):] = r
    mask[i, length - len(r):] = 1
  pixels = (np.stack([normalize_image(x) for x in images]) if images
            else np.zeros((0, 1, 1, 3), np.float32))
  un = uncond_ids(ids, mask, special, uncond)
  return PromptBatch(ids=ids, mask=mask, uncond=un, images=pixels, uncond_has_images=uncond == "keep_images",
                     uncond_mask=uncond_attended(ids, un, mask, uncond_pads))


def uncond_attended(ids: np.ndarray, uncond: np.ndarray, mask: np.ndarray, pads: str) -> np.ndarray | None:
  """The unconditional rows' attention mask: None ("attend": as `mask`) or the unblanked tokens."""
  if pads == "attend":
    return None
  if pads != "drop":
    raise ValueError(f"uncond_pads {pads!r} unknown; use 'attend' or 'drop'")
  # A blanked token is one the unconditional row changed to pad; real pads of the prompt stay 0.
  return (mask.astype(bool) & (uncond == ids)).astype(mask.dtype)


def normalize_image(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) -> float32 in [-1, 1] (mean/std 0.5, as Janus's image processor)."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"history images must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
  return from_uint8(image)
