"""The KV-cache CFG sampler against transformers and against a reference loop of its modules."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T

from hf_janus import SIZES, hf_model
from pgen_jax.models import load_janus, make_mesh
from pgen_jax.sampling import PromptBatch, Sampler, SamplingConfig, SpecialTokens, uncond_ids
from pgen_jax.sampling.sampler import PHASE_ALIGN, phase_lengths

BOI, EOI = 317, 316  # tiny vocab of 320: 319 is <image_placeholder>
SPECIAL = SpecialTokens(bos=1, pad=0, boi=BOI, eoi=EOI, image=319)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  hf = hf_model(seed=21, **SIZES["gqa"])
  path = tmp_path_factory.mktemp("hf")
  hf.save_pretrained(path)
  return hf, load_janus(path, mesh=make_mesh(devices=jax.devices()[:1]))


def one_device():
  return make_mesh(devices=jax.devices()[:1])


def text_batch(rng, b=2, t=9):
  ids = np.concatenate([np.ones((b, 1), np.int32), rng.integers(3, 300, (b, t - 2)).astype(np.int32),
                        np.full((b, 1), BOI, np.int32)], axis=1)
  mask = np.ones_like(ids)
  return PromptBatch(ids=ids, mask=mask, uncond=uncond_ids(ids, mask, SPECIAL), images=np.zeros((0, 16, 16, 3),
                     np.float32), uncond_has_images=False)


def history_batch(rng, images_per_prompt=(2, 1), size=16, n_tok=16, uncond="official"):
  rows, imgs = [], []
  for k in images_per_prompt:
    row = [1] + list(rng.integers(3, 300, 3))
    for _ in range(k):
      row += [BOI] + [319] * n_tok + [EOI] + list(rng.integers(3, 300, 2))
      imgs.append(rng.uniform(-1, 1, (size, size, 3)).astype(np.float32))
    rows.append(row + [BOI])
  t = max(map(len, rows))
  ids = np.zeros((len(rows), t), np.int32)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
  return PromptBatch(ids=ids, mask=mask, uncond=uncond_ids(ids, mask, SPECIAL, uncond), images=np.stack(imgs),
                     uncond_has_images=uncond == "keep_images")


def test_greedy_cfg_equals_transformers_generate(models):
  hf, ours = models
  batch = text_batch(np.random.default_rng(0))
  gen = T.GenerationConfig(do_sample=False, guidance_scale=5.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           generation_kwargs={"boi_token_id": BOI})
  with torch.no_grad():
    ref = hf.generate(torch.tensor(batch.ids, dtype=torch.long), attention_mask=torch.tensor(batch.mask),
                      generation_mode="image", generation_config=gen).numpy()
  out = Sampler(ours, one_device(), SamplingConfig(temperature=0.0, cfg_weight=5.0))(batch, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert out.images.shape == (2, 16, 16, 3) and out.images.dtype == jnp.uint8


def prompt_rows(hf, batch: PromptBatch):
  """Embeddings (2B, T, D) and mask of the [cond; uncond] prompt rows, with transformers' modules; the
  unconditional rows attend the tokens batch.uncond_mask keeps (default: batch.mask)."""
  m = hf.model

  def embed(ids, with_images):
    e = m.get_input_embeddings()(torch.tensor(ids, dtype=torch.long))
    if with_images and len(batch.images):
      feats = m.get_image_features(torch.tensor(batch.images).permute(0, 3, 1, 2)).pooler_output
      mask = torch.tensor(ids == hf.config.image_token_id)[..., None].expand_as(e)
      e = e.masked_scatter(mask, feats.reshape(-1, e.shape[-1]))
    return e
  emb = torch.cat([embed(batch.ids, True), embed(batch.uncond, batch.uncond_has_images)])
  umask = batch.mask if batch.uncond_mask is None else batch.uncond_mask
  return emb, torch.tensor(np.concatenate([batch.mask, umask]), dtype=torch.long)


def reference_loop(hf, batch: PromptBatch, w: float, steps: int):
  """Greedy CFG with history images, written with transformers' modules and its DynamicCache; the
  unconditional rows attend the tokens batch.uncond_mask keeps (default: batch.mask)."""
  m = hf.model
  with torch.no_grad():
    emb, mask = prompt_rows(hf, batch)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = T.DynamicCache(config=hf.config.text_config)
    out = m.language_model(inputs_embeds=emb, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    b = batch.ids.shape[0]
    tokens = []
    for i in range(steps):
      logits = m.generation_head(out.last_hidden_state[:, -1])
      c, u = logits[:b], logits[b:]
      tok = (u + w * (c - u)).argmax(-1)
      tokens.append(tok)
      e = hf.prepare_embeddings_for_image_generation(torch.cat([tok, tok])[:, None])
      mask = torch.cat([mask, torch.ones((2 * b, 1), dtype=torch.long)], dim=1)
      out = m.language_model(inputs_embeds=e, attention_mask=mask, position_ids=pos[:, -1:] + i + 1,
                             cache=out.cache, use_cache=True)
    return torch.stack(tokens, 1).numpy()


@pytest.mark.parametrize("uncond", ["official", "keep_images"])
def test_history_images_greedy_equals_reference_loop(models, uncond):
  hf, ours = models
  batch = history_batch(np.random.default_rng(1), uncond=uncond)
  ref = reference_loop(hf, batch, 5.0, 16)
  out = Sampler(ours, one_device(), SamplingConfig(temperature=0.0))(batch, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_changing_a_history_image_changes_the_output(models):
  _, ours = models
  batch = history_batch(np.random.default_rng(2), images_per_prompt=(1,))
  sampler = Sampler(ours, one_device(), SamplingConfig(temperature=0.0, num_tokens=4, decode_images=False))
  a = sampler(batch, jax.random.key(0))
  batch.images = batch.images[:, ::-1].copy()  # same pixels, flipped: another history image
  b = sampler(batch, jax.random.key(0))
  # The greedy token's log-prob is a function of the whole first-step distribution.
  assert np.abs(np.asarray(a.logprobs) - np.asarray(b.logprobs)).max() > 1e-3


def cfg_probs(hf, batch, w, temperature):
  """Reference first-step distribution from transformers' modules."""
  with torch.no_grad():
    ids = torch.tensor(np.concatenate([batch.ids, batch.uncond]), dtype=torch.long)
    h = hf.model.language_model(input_ids=ids).last_hidden_state[:, -1]
    logits = hf.model.generation_head(h)
    c, u = logits[:1], logits[1:]
    return torch.softmax((u + w * (c - u)) / temperature, -1)[0].numpy()


@pytest.mark.parametrize("top_k", [0, 5])
def test_sampling_frequencies_match_the_cfg_softmax(models, top_k):
  hf, ours = models
  batch = text_batch(np.random.default_rng(3), b=1)
  n = 4000
  cfg = SamplingConfig(cfg_weight=1.5, temperature=1.3, top_k=top_k, num_samples=n, num_tokens=1,
                       decode_images=False)
  out = Sampler(ours, one_device(), cfg)(batch, jax.random.key(7))
  freq = np.bincount(np.asarray(out.tokens)[:, 0], minlength=64) / n
  p = cfg_probs(hf, batch, 1.5, 1.3)
  if top_k:
    keep = np.argsort(-p)[:top_k]
    q = np.zeros_like(p)
    q[keep] = p[keep] / p[keep].sum()
    p = q
  assert p.max() < 0.5  # a spread distribution, so the check has power
  bound = 5 * np.sqrt(p * (1 - p) / n) + 1e-3
  assert (np.abs(freq - p) <= bound).all(), np.abs(freq - p).max()
  # The returned log-probs are those of the sampling distribution.
  toks = np.asarray(out.tokens)[:, 0]
  np.testing.assert_allclose(np.exp(np.asarray(out.logprobs)[:, 0]), p[toks], rtol=1e-4)


def test_sharded_sampling_equals_single_device(models):
  _, ours = models
  batch = history_batch(np.random.default_rng(4))
  cfg = SamplingConfig(temperature=1.0, num_samples=2, top_p=0.9)
  a = Sampler(ours, one_device(), cfg)(batch, jax.random.key(3))
  b = Sampler(ours, make_mesh(data=2, fsdp=2, tensor=2), cfg)(batch, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-4)
  # The same tokens decoded with the VQ's convs split over 8 devices: the float pixels differ in rounding,
  # so a value near .5 can land one uint8 level apart (seen: 1 of 3072 on an AVX-512 machine)
  diff = np.abs(np.asarray(a.images).astype(int) - np.asarray(b.images).astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_decode_steps_feed_one_token_each(models, monkeypatch):
  """Cost is linear in steps: after the prefill each step runs the LM on one new token per row."""
  _, ours = models
  seen = []
  lm_cls = type(ours.language_model)
  original = lm_cls.__call__

  def spy(self, inputs_embeds, *args, **kw):
    seen.append(inputs_embeds.shape[1])
    return original(self, inputs_embeds, *args, **kw)

  monkeypatch.setattr(lm_cls, "__call__", spy)
  batch = text_batch(np.random.default_rng(5), t=9)
  with jax.disable_jit():
    Sampler(ours, one_device(), SamplingConfig(temperature=0.0, num_tokens=6, decode_images=False))(
        batch, jax.random.key(0))
  assert seen == [9, 1, 1, 1, 1, 1]


def test_uncond_rows_at_their_true_length_equal_the_reference_loop(models):
  """uncond_pads=drop: the unconditional row holds only its real tokens; the reference attends the
  same tokens through a full-width mask, our sampler prefills the compacted row."""
  hf, ours = models
  batch = history_batch(np.random.default_rng(6), uncond="keep_images")
  batch.uncond_mask = (batch.mask.astype(bool) & (batch.uncond == batch.ids)).astype(np.int32)
  assert batch.uncond_rows()[0].shape[1] < batch.ids.shape[1]  # text blanked, images kept: shorter
  ref = reference_loop(hf, batch, 5.0, 16)
  out = Sampler(ours, one_device(), SamplingConfig(temperature=0.0))(batch, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_shared_prefix_samples_equal_separately_prefilled_ones(models):
  """G samples attending one prefill of their prompt draw the same tokens, with the same log-probs,
  as G copies of the prompt each prefilled on its own (the same per-sample keys)."""
  _, ours = models
  batch = history_batch(np.random.default_rng(7), uncond="official")
  n = 3
  cfg = SamplingConfig(temperature=1.0, num_samples=n, decode_images=False)
  shared = Sampler(ours, one_device(), cfg)(batch, jax.random.key(5))
  per_image = np.repeat(np.arange(len(batch.ids)), [2, 1])  # images of prompt 0, then of prompt 1
  copies = PromptBatch(ids=np.repeat(batch.ids, n, 0), mask=np.repeat(batch.mask, n, 0),
                       uncond=np.repeat(batch.uncond, n, 0),
                       images=np.concatenate([batch.images[per_image == i] for i in range(2) for _ in range(n)]),
                       uncond_has_images=False)
  single = Sampler(ours, one_device(), dataclasses.replace(cfg, num_samples=1))(copies, jax.random.key(5))
  np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(single.tokens))
  np.testing.assert_allclose(np.asarray(shared.logprobs), np.asarray(single.logprobs), rtol=1e-5, atol=1e-5)
  assert len(np.unique(np.asarray(shared.tokens)[:n], axis=0)) == n  # the samples do differ


def hlo_computations(hlo: str) -> dict[str, list[str]]:
  comps, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
    if head:
      name, comps[head.group(1)] = head.group(1), []
    elif line.startswith("}"):
      name = None
    elif name:
      comps[name].append(line)
  return comps


def loop_instructions(hlo: str) -> list[str]:
  """Every instruction of the while bodies and of the computations they call (fusions included)."""
  comps = hlo_computations(hlo)
  todo, seen = re.findall(r"body=%?([\w.\-]+)", hlo), set()
  while todo:
    name = todo.pop()
    if name not in seen and name in comps:
      seen.add(name)
      todo += [c for line in comps[name] for c in re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)]
  return [line for name in seen for line in comps[name]]


def test_decode_loop_never_copies_the_kv_cache(models):
  """The compiled decode loop reads and writes the cache in place: no transpose or copy of a
  cache-sized array inside the while body or anything it calls."""
  _, ours = models
  batch = history_batch(np.random.default_rng(8))
  sampler = Sampler(ours, one_device(), SamplingConfig(temperature=1.0, num_samples=2, decode_images=False))
  args = [sampler.state, *map(sampler._replicate, sampler.inputs(batch, jax.random.key(0)))]
  hlo = sampler.compiled(False).lower(*args).compile().as_text()
  size = int(np.prod(ours.language_model.cache_shape(2 * 2 * 2, 15)))  # 2 prompts x 2 samples x cond/uncond
  ops = []
  for line in loop_instructions(hlo):
    m = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = \w+\[([\d,]+)\]\S* ([\w\-]+)\(", line)
    if m and int(np.prod([int(d) for d in m.group(1).split(",")])) == size:
      ops.append(m.group(2))
  assert "dynamic-update-slice" in ops  # the loop does carry and write the cache
  assert not {"transpose", "copy"} & set(ops), ops


def test_phase_lengths_cover_every_step_once_with_aligned_caches():
  for num_tokens, phases in [(576, 1), (576, 16), (576, 40), (40, 3), (16, 16), (2, 4)]:
    lengths = phase_lengths(num_tokens, phases)
    assert lengths[-1] == max(num_tokens - 1, 1) and lengths == sorted(set(lengths)) and len(lengths) <= phases
    assert all(n % PHASE_ALIGN == 0 for n in lengths[:-1])
    # step i (1 .. num_tokens - 1) runs in the first phase whose cache holds position i - 1
    owner = [next(p for p, n in enumerate(lengths) if i <= n) for i in range(1, num_tokens)]
    assert owner == sorted(owner)
  assert phase_lengths(40, 3) == [16, 32, 39]  # 13, 26, 39 rounded up to 16
  assert phase_lengths(576, 12) == [48 * p for p in range(1, 12)] + [575]
  with pytest.raises(ValueError, match="decode_phases"):
    SamplingConfig(decode_phases=0)


def teacher_forced_logits(hf, batch: PromptBatch, tokens: np.ndarray, n: int, sampling: SamplingConfig):
  """The distributions sampled tokens were drawn from, recomputed without a cache: transformers' modules
  run once, causally, over every sample's prompt rows (cond, uncond) followed by its drawn tokens; CFG,
  temperature and top-k written out here. (B * n, N, V) fp32 logits."""
  b, num = batch.ids.shape[0], tokens.shape[1]
  with torch.no_grad():
    emb, mask = prompt_rows(hf, batch)
    rows = np.concatenate([np.repeat(np.arange(b), n), b + np.repeat(np.arange(b), n)])
    drawn = hf.prepare_embeddings_for_image_generation(torch.tensor(np.concatenate([tokens, tokens])[:, :-1]))
    mask = torch.cat([mask[rows], torch.ones((2 * b * n, num - 1), dtype=torch.long)], 1)
    hidden = hf.model.language_model(inputs_embeds=torch.cat([emb[rows], drawn], 1), attention_mask=mask,
                                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
    logits = hf.model.generation_head(hidden[:, emb.shape[1] - 1:])
    c, u = logits[:b * n], logits[b * n:]
    g = u + sampling.cfg_weight * (c - u)
    g = g / sampling.temperature if sampling.temperature > 0 else g
    if sampling.top_k:
      g = g.masked_fill(g < g.topk(sampling.top_k, -1).values[..., -1:], -torch.inf)
    return g.numpy()


def compact_uncond(batch: PromptBatch) -> PromptBatch:
  batch.uncond_mask = (batch.mask.astype(bool) & (batch.uncond == batch.ids)).astype(np.int32)
  return batch


# Several samples per prompt, CFG, a decode of 40 tokens in phases of 16, 32 and 39 cache positions: text
# prompts (one prefill of cond and uncond rows) with temperature and top-k; history prompts whose
# unconditional rows keep the images at their true length (two prefixes), plain sampling.
PHASED = {
    "text-topk": (lambda: text_batch(np.random.default_rng(10)),
                  SamplingConfig(cfg_weight=5.0, temperature=1.3, top_k=5, num_samples=3, num_tokens=40,
                                 decode_images=False, decode_phases=3)),
    "history": (lambda: compact_uncond(history_batch(np.random.default_rng(11), uncond="keep_images")),
                SamplingConfig(cfg_weight=3.0, temperature=1.0, num_samples=2, num_tokens=40, decode_images=False,
                               decode_phases=3)),
}


@pytest.fixture(scope="module", params=sorted(PHASED))
def phased(request, models):
  make, cfg = PHASED[request.param]
  batch = make()
  _, ours = models
  assert len(phase_lengths(cfg.num_tokens, cfg.decode_phases)) == 3
  run = lambda c: Sampler(ours, one_device(), c)(batch, jax.random.key(9))
  return batch, cfg, run(cfg), run(dataclasses.replace(cfg, decode_phases=1))


def test_phased_decode_equals_one_loop_over_the_full_cache(phased):
  """Same keys, same tokens; log-probs equal up to XLA's summation order. The masked positions a phase
  drops add exact zeros, but XLA:CPU groups the terms of a sum over keys (the softmax normaliser, the dot
  with the values) by the sum's length, so the same terms can round differently in the last bit; through
  the layers and the cache that grows to a few ulp of the logits over 40 steps (2.6e-6 seen here), so
  atol 1e-5 (relative to log-probs of about -1 to -5: under 1e-5)."""
  _, _, out, one_loop = phased
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(one_loop.tokens))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(one_loop.logprobs), rtol=0, atol=1e-5)
  assert len(np.unique(np.asarray(out.tokens), axis=0)) == len(out.tokens)  # samples differ: real draws


def test_phased_decode_equals_a_teacher_forced_transformers_pass(phased, models):
  """Each drawn token is the draw of its sample's key folded with the step (jax.random.categorical, as the
  sampler documents) from the distribution transformers computes without a cache, and its log-prob is that
  distribution's; fp32, kernels differ, so the log-probs agree to 1e-4."""
  hf, _ = models
  batch, cfg, out, _ = phased
  tokens = np.asarray(out.tokens)
  ref = teacher_forced_logits(hf, batch, tokens, cfg.num_samples, cfg)
  keys = jax.random.split(jax.random.key(9), len(tokens))
  draws = np.stack([np.asarray(jax.vmap(lambda k, x: jax.random.categorical(jax.random.fold_in(k, i), x))(
      keys, ref[:, i])) for i in range(tokens.shape[1])], 1)
  np.testing.assert_array_equal(tokens, draws)
  logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(ref, -1)), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logprobs), logp, rtol=0, atol=1e-4)


def test_each_decode_phase_updates_its_cache_in_place(models):
  """Every phase's loop carries a cache of its own length and writes it in place (no copy or transpose of
  it inside the loops); the phases are 16, 32 and 39 positions long, not 39 each."""
  _, ours = models
  batch = text_batch(np.random.default_rng(12))
  sampler = Sampler(ours, one_device(), SamplingConfig(num_samples=2, num_tokens=40, decode_images=False,
                                                       decode_phases=3))
  args = [sampler.state, *map(sampler._replicate, sampler.inputs(batch, jax.random.key(0)))]
  lines = loop_instructions(sampler.compiled(False).lower(*args).compile().as_text())
  ops = {}
  for line in lines:
    m = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = \w+\[([\d,]+)\]\S* ([\w\-]+)\(", line)
    if m:
      ops.setdefault(tuple(int(d) for d in m.group(1).split(",")), set()).add(m.group(2))
  for length in (16, 32, 39):
    shape = ours.language_model.cache_shape(2 * 2 * 2, length)  # 2 prompts x 2 samples x cond/uncond
    assert "dynamic-update-slice" in ops.get(shape, set()), (length, sorted(ops))
    assert not {"transpose", "copy", "pad", "concatenate"} & ops[shape], (length, ops[shape])


def test_prompts_sampled_in_chunks_equal_all_at_once(models):
  """prompt_chunk: the batch's prompts drawn a chunk at a time (smaller KV caches) give the same samples,
  each prompt with its own images and its samples' own keys."""
  _, ours = models
  batch = history_batch(np.random.default_rng(5), images_per_prompt=(1, 1, 1, 1))
  whole = SamplingConfig(temperature=1.0, num_samples=2, num_tokens=6, decode_images=False)
  a = Sampler(ours, one_device(), whole)(batch, jax.random.key(2))
  b = Sampler(ours, one_device(), dataclasses.replace(whole, prompt_chunk=2))(batch, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
  uneven = history_batch(np.random.default_rng(5), images_per_prompt=(2, 1, 0, 1))  # 3 and 1 images
  with pytest.raises(ValueError, match="different numbers of images"):
    Sampler(ours, one_device(), dataclasses.replace(whole, prompt_chunk=2))(uneven, jax.random.key(2))
