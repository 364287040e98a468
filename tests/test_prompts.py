"""Prompt building from user histories, with a small real tokenizer made here."""

import numpy as np
import pytest
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from pgen_jax.sampling import HistoryItem, PromptTemplate, SpecialTokens, build_batch, prompt_ids, uncond_ids

WORDS = ["<unk>", ":", "toy", "story", "heat", "(1995)", "|", "comedy", "crime", "next", "poster"]
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>", "<|User|>", "<|Assistant|>", "<begin_of_image>",
            "<end_of_image>", "<image_placeholder>"]


@pytest.fixture(scope="module")
def tok():
  t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast = T.PreTrainedTokenizerFast(tokenizer_object=t, bos_token=SPECIALS[0], pad_token=SPECIALS[1],
                                   unk_token="<unk>")
  fast.add_special_tokens({"additional_special_tokens": SPECIALS[2:]})
  return fast


def ids_of(tok, *names):
  return [tok.convert_tokens_to_ids(n) for n in names]


def image(v):
  return np.full((4, 4, 3), v, np.uint8)


TEMPLATE = PromptTemplate(prompt="<|User|> : {history} next poster <|Assistant|> :", item="{image} {text} ")


def test_prompt_ids_by_hand(tok):
  sp = SpecialTokens.from_tokenizer(tok)
  history = [HistoryItem(image(0), "toy story (1995) | comedy"), HistoryItem(image(255), "heat | crime")]
  ids, imgs = prompt_ids(history, tok, sp, num_image_tokens=3, template=TEMPLATE)
  block = ids_of(tok, "<begin_of_image>") + ids_of(tok, "<image_placeholder>") * 3 + ids_of(tok, "<end_of_image>")
  expected = (ids_of(tok, "<｜begin▁of▁sentence｜>", "<|User|>", ":") + block
              + ids_of(tok, "toy", "story", "(1995)", "|", "comedy") + block + ids_of(tok, "heat", "|", "crime")
              + ids_of(tok, "next", "poster", "<|Assistant|>", ":", "<begin_of_image>"))
  assert ids == expected
  assert [int(x[0, 0, 0]) for x in imgs] == [0, 255]


def test_items_without_images_and_default_template(tok):
  sp = SpecialTokens.from_tokenizer(tok)
  ids, imgs = prompt_ids([HistoryItem(None, "heat")], tok, sp, num_image_tokens=3)
  assert imgs == [] and sp.image not in ids
  assert ids[0] == sp.bos and ids[-1] == sp.boi
  assert ids_of(tok, "heat")[0] in ids


def test_batch_left_pads_and_builds_cfg_rows(tok):
  sp = SpecialTokens.from_tokenizer(tok)
  long = [HistoryItem(image(10), "toy story"), HistoryItem(image(20), "heat")]
  short = [HistoryItem(image(30), "heat")]
  for mode in ("official", "keep_images"):
    b = build_batch([long, short], tok, sp, 3, template=TEMPLATE, uncond=mode)
    assert b.ids.shape[0] == 2 and b.images.shape == (3, 4, 4, 3)
    np.testing.assert_allclose(b.images[:, 0, 0, 0], [10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1])
    n_short = int(b.mask[1].sum())
    assert (b.mask[1, :-n_short] == 0).all() and (b.ids[1, :-n_short] == sp.pad).all()
    for row in range(2):
      real = b.uncond[row][b.mask[row] == 1]
      cond = b.ids[row][b.mask[row] == 1]
      assert real[0] == sp.bos and real[-1] == sp.boi
      if mode == "official":  # everything in between is pad: history images dropped too
        assert (real[1:-1] == sp.pad).all()
      else:  # text gone, image blocks kept in place
        keep = np.isin(cond, [sp.boi, sp.eoi, sp.image])
        np.testing.assert_array_equal(real[1:-1][keep[1:-1]], cond[1:-1][keep[1:-1]])
        assert (real[1:-1][~keep[1:-1]] == sp.pad).all()
    assert b.uncond_has_images == (mode == "keep_images")


def test_bad_inputs(tok):
  sp = SpecialTokens.from_tokenizer(tok)
  with pytest.raises(ValueError, match="pad_to"):
    build_batch([[HistoryItem(image(1), "heat")]], tok, sp, 3, pad_to=4)
  with pytest.raises(ValueError, match="uint8"):
    build_batch([[HistoryItem(np.zeros((4, 4, 3), np.float32), "heat")]], tok, sp, 3)
  with pytest.raises(ValueError, match="uncond mode"):
    uncond_ids(np.ones((1, 3), np.int32), np.ones((1, 3), np.int32), sp, "none")
  plain = T.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                    unk_token="<unk>")
  with pytest.raises(ValueError, match="is it a Janus tokenizer"):
    SpecialTokens.from_tokenizer(plain)
