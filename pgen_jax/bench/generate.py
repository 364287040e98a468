"""Image-generation throughput: our sampler against transformers' generate, same config and machine.

  python -m pgen_jax.bench.generate --preset=tiny --prompts=1,4 --samples=4            # CPU
  python -m pgen_jax.bench.generate --preset=mid --prompts=4,16 --samples=4 --repeats=1 # CPU, vs transformers
  python -m pgen_jax.bench.generate --preset=demo --history=5 --prompts=2 --samples=8   # shared vs unshared
  python -m pgen_jax.bench.generate --preset=janus-pro-1b --dtype=bfloat16 --prompts=1,16,64

Random weights. Text prompts (--history=0): our sampler against transformers' generate (which
ignores history images, so it can only be compared on text). History prompts (--history=K, the real
layout: K items of <begin_of_image> + image placeholders + <end_of_image> + text): our sampler,
which prefills each prompt once for its samples, against the same sampler run unshared (each
sample its own copy of the prompt, the unconditional row at full length, as before the prefix
was shared). Prints images/s, image tokens/s, the ratio and, on an accelerator, the fraction of
the HBM roofline of the decode loop: (weights + KV cache bytes read per step) * steps / time /
bandwidth. Under each row, the bytes of a decode step averaged over the steps: what the model must
read (weights, each shared prefix once, each row's filled positions) beside what the phased loop
reads (each phase's whole cache, and the pads between phases), the per-sample KV read per image
against one loop over the full cache, and the compile time (first call less a timed one).
"""


from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from pgen_jax import distributed
from pgen_jax.models import Janus, make_mesh, preset
from pgen_jax.sampling import PromptBatch, Sampler, SamplingConfig, SpecialTokens, per_sample, uncond_ids
from pgen_jax.sampling.sampler import phase_lengths

_PRESET = flags.DEFINE_string("preset", "tiny", "model preset")
_PROMPTS = flags.DEFINE_list("prompts", ["1", "4"], "prompt batch sizes")
_SAMPLES = flags.DEFINE_integer("samples", 4, "images per prompt")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "prompt tokens (text prompts)")
_HISTORY = flags.DEFINE_integer("history", 0, "history images per prompt (0: text prompts, compared with transformers)")
_ITEM_TEXT = flags.DEFINE_integer("item_text", 8, "text tokens per history item")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "params and compute dtype")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per setting (after one warm-up)")
_TOKENS = flags.DEFINE_integer("tokens", 0, "image tokens per sample (0: the model's); fewer decode no image, "
                               "so the time per decode step can be split by cache length")
_DECODE = flags.DEFINE_bool("decode", True, "decode the images with the VQ (both sides when comparing)")
_PHASES = flags.DEFINE_integer("decode_phases", SamplingConfig.decode_phases,
                               "decode loops over growing caches (1: one loop over the full cache)")
_HF = flags.DEFINE_bool("hf", True, "also time transformers' generate (needs torch)")
_HBM = flags.DEFINE_float("hbm_gbps", 0.0, "HBM bandwidth in GB/s (default: from the device kind)")
_JSON = flags.DEFINE_string("json", "", "append results as JSON lines to this file")

# Peak HBM bandwidth (GB/s) by jax device_kind substring.
HBM_GBPS = {"H200": 4800, "H100": 3350, "A100": 2039, "L4": 300, "TPU v4": 1200, "TPU v5 lite": 819,
            "TPU v5p": 2765, "TPU v6 lite": 1640}


def bandwidth() -> float | None:
  if _HBM.value:
    return _HBM.value * 1e9
  kind = jax.devices()[0].device_kind
  for k, v in HBM_GBPS.items():
    if k.lower() in kind.lower():
      return v * 1e9 * jax.device_count()
  return None


def decode_bytes_per_step(cfg, rows: int, cache_len: int, itemsize: int) -> float:
  """Bytes one decode step must read: LM + generation heads, and the KV cache (on average half full)."""
  t, q = cfg.text, cfg.vq
  d, f, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
  kv = t.num_key_value_heads * t.dim_per_head
  per_layer = d * (t.num_attention_heads * t.dim_per_head) * 2 + d * kv * 2 + 3 * d * f + 2 * d
  heads = (q.embed_dim * q.projection_dim + q.projection_dim ** 2 + d * q.projection_dim
           + q.projection_dim * q.num_embeddings + 3 * q.projection_dim + q.num_embeddings)  # kernels, biases
  weights = (layers * per_layer + d + heads) * itemsize
  cache = 2 * layers * rows * cache_len * kv * itemsize
  return weights + cache


def decode_bytes(cfg, b: int, n: int, prefix_len: int, n_tok: int, phases: int, itemsize: int) -> dict:
  """Bytes of one decode step, averaged over the n_tok - 1 steps of b prompts x n samples (2 rows each).

  must: weights + each prompt's prefix (cond + uncond, prefix_len positions) once + every row's filled
  positions (step i attends 0 .. i - 1). loop: the same weights and prefixes + each phase's whole cache
  at each of its steps + the pads between phases (the old cache read; what they write is `copy_written`).
  Per image: one sample's two rows over all steps, against one loop over the full n_tok - 1 cache."""
  weights = decode_bytes_per_step(cfg, 0, 0, itemsize)
  pos = decode_bytes_per_step(cfg, 1, 1, itemsize) - weights  # one row, one position: k and v of every layer
  rows, steps = 2 * b * n, max(n_tok - 1, 1)
  lengths = phase_lengths(n_tok, phases)
  prev = [0] + lengths[:-1]
  own = sum((min(ln, n_tok - 1) - p) * ln for ln, p in zip(lengths, prev))  # positions read, per row
  copy_read, copy_written = sum(prev[1:]), sum(lengths[1:])
  single = (n_tok - 1) * steps
  out = {"weights": weights, "prefixes": b * prefix_len * pos, "live_kv": rows * pos * n_tok / 2 * (n_tok - 1) / steps,
         "own_kv": rows * pos * own / steps, "copy_read": rows * pos * copy_read / steps,
         "copy_written": rows * pos * copy_written / steps}
  out["must"] = out["weights"] + out["prefixes"] + out["live_kv"]
  out["loop"] = out["weights"] + out["prefixes"] + out["own_kv"] + out["copy_read"]
  out["kv_per_image"] = 2 * pos * (own + copy_read)
  out["kv_per_image_single_loop"] = 2 * pos * single
  out["kv_per_image_with_writes"] = 2 * pos * (own + copy_read + copy_written)
  out["phase_lengths"] = lengths
  return out


def prompts(cfg, b: int, length: int, rng):
  boi = cfg.text.vocab_size - 2
  special = SpecialTokens(bos=cfg.text.bos_token_id or 1, pad=cfg.text.pad_token_id or 0, boi=boi, eoi=boi - 1,
                          image=cfg.image_token_id)
  ids = np.concatenate([np.full((b, 1), special.bos), rng.integers(3, min(cfg.text.vocab_size - 3, 30000),
                                                                   (b, length - 2)), np.full((b, 1), boi)], 1)
  ids = ids.astype(np.int32)
  mask = np.ones_like(ids)
  return PromptBatch(ids=ids, mask=mask, uncond=uncond_ids(ids, mask, special),
                     images=np.zeros((0, 1, 1, 3), np.float32), uncond_has_images=False), special


def history_prompts(cfg, b: int, k: int, text: int, rng) -> PromptBatch:
  """b prompts of k history items each in the real layout, random images and text, uncond_pads=drop."""
  boi = cfg.text.vocab_size - 2
  special = SpecialTokens(bos=1, pad=0, boi=boi, eoi=boi - 1, image=cfg.image_token_id)
  words = lambda n: list(rng.integers(3, boi - 2, n))
  rows = [[1] + sum(([boi] + [cfg.image_token_id] * cfg.num_image_tokens + [boi - 1] + words(text)
                     for _ in range(k)), []) + [boi] for _ in range(b)]
  ids = np.asarray(rows, np.int32)
  mask = np.ones_like(ids)
  uncond = uncond_ids(ids, mask, special)
  size = cfg.vision.image_size
  return PromptBatch(ids=ids, mask=mask, uncond=uncond, uncond_has_images=False,
                     images=rng.uniform(-1, 1, (b * k, size, size, 3)).astype(np.float32),
                     uncond_mask=(mask.astype(bool) & (uncond == ids)).astype(np.int32))


def unshared(batch: PromptBatch, n: int, k: int) -> PromptBatch:
  """Each of the n samples with its own copy of its prompt; the uncond row attends its pads."""
  per_prompt = batch.images.reshape(len(batch.ids), k, *batch.images.shape[1:])
  return PromptBatch(ids=per_sample(batch.ids, n), mask=per_sample(batch.mask, n),
                     uncond=per_sample(batch.uncond, n), uncond_has_images=False,
                     images=per_sample(per_prompt, n).reshape(-1, *batch.images.shape[1:]))


def time_ours(model, mesh, batch, n) -> tuple[float, float]:
  """Median seconds of a call, and the first call's excess over it (about the compile time)."""
  sampler = Sampler(model, mesh, SamplingConfig(num_samples=n, num_tokens=_TOKENS.value or None,
                                                decode_images=_DECODE.value, decode_phases=_PHASES.value))
  t0 = time.perf_counter()
  jax.block_until_ready(sampler(batch, jax.random.key(0)).tokens)  # compile
  first = time.perf_counter() - t0
  times = []
  for i in range(_REPEATS.value):
    t0 = time.perf_counter()
    out = sampler(batch, jax.random.key(i + 1))
    jax.block_until_ready((out.tokens, out.images))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), max(first - float(np.median(times)), 0.0)


def time_hf(hf_model, batch, special, n) -> float:
  import torch  # lazy: the transformers reference, only with --hf
  import transformers as T
  dev = next(hf_model.parameters()).device
  gen = T.GenerationConfig(do_sample=True, guidance_scale=5.0, num_return_sequences=n, pad_token_id=special.pad,
                           bos_token_id=special.bos, generation_kwargs={"boi_token_id": special.boi})
  ids = torch.tensor(batch.ids, dtype=torch.long, device=dev)
  mask = torch.tensor(batch.mask, device=dev)
  times = []
  with torch.no_grad():
    for i in range(_REPEATS.value + 1):
      t0 = time.perf_counter()
      toks = hf_model.generate(ids, attention_mask=mask, generation_mode="image", generation_config=gen)
      if _DECODE.value:
        hf_model.decode_image_tokens(toks)
      if dev.type == "cuda":
        torch.cuda.synchronize()
      if i:
        times.append(time.perf_counter() - t0)
  return float(np.median(times))


def build_hf(cfg, dtype):
  import torch  # lazy: the transformers reference, only with --hf
  import transformers as T
  hf_cfg = T.JanusConfig(**{k: v for k, v in cfg.to_hf().items() if k in ("text_config", "vision_config",
                                                                          "vq_config", "image_token_id")},
                         tie_word_embeddings=False)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  with torch.device(dev):
    model = T.JanusForConditionalGeneration(hf_cfg).to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
  return model.eval()


def main(argv):
  del argv
  distributed.initialize()
  cfg = preset(_PRESET.value)
  dtype = jnp.dtype(_DTYPE.value)
  mesh = make_mesh()
  model = Janus(cfg, nnx.Rngs(0), dtype=dtype, param_dtype=dtype)
  history = _HISTORY.value
  # transformers always generates the model's full image, so it is compared only at that length
  hf = build_hf(cfg, _DTYPE.value) if _HF.value and not history and not _TOKENS.value else None
  bw = bandwidth()
  n_tok = _TOKENS.value or cfg.num_image_tokens
  against = "unshared" if history else "hf"
  layout = f"{history} history images" if history else f"prompt {_PROMPT_LEN.value} tokens"
  print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind}; preset {_PRESET.value}; "
        f"{_DTYPE.value}; {layout}; {n_tok} image tokens")
  print(f"{'prompts':>7} {'samples':>7} {'ours img/s':>11} {'ours tok/s':>11} {'ms/step':>8} {against + ' img/s':>14} "
        f"{'ratio':>6} {'roofline':>8}")
  rng = np.random.default_rng(0)
  for b in map(int, _PROMPTS.value):
    n = _SAMPLES.value
    if history:
      batch = history_prompts(cfg, b, history, _ITEM_TEXT.value, rng)
    else:
      batch, special = prompts(cfg, b, _PROMPT_LEN.value, rng)
    t, compile_s = time_ours(model, mesh, batch, n)
    imgs = b * n / t
    row = {"preset": _PRESET.value, "dtype": _DTYPE.value, "prompts": b, "samples": n, "history": history,
           "prompt_len": int(batch.ids.shape[1]), "device": jax.devices()[0].device_kind,
           "ours_images_per_s": imgs, "ours_tokens_per_s": imgs * n_tok, "tokens": n_tok,
           "decode": _DECODE.value, "ms_per_token_step": t / n_tok * 1e3, "decode_phases": _PHASES.value,
           "compile_s": compile_s}
    # Each prompt's prefix (cond + uncond rows) is read once per step, then every row's own tokens.
    by = decode_bytes(cfg, b, n, batch.ids.shape[1] + batch.uncond_rows()[0].shape[1], n_tok, _PHASES.value,
                      dtype.itemsize)
    row.update({"phase_lengths": by["phase_lengths"], "must_read_bytes_per_step": by["must"],
                "loop_read_bytes_per_step": by["loop"], "weights_bytes": by["weights"],
                "prefix_bytes_per_step": by["prefixes"], "live_kv_bytes_per_step": by["live_kv"],
                "own_kv_read_bytes_per_step": by["own_kv"], "boundary_copy_read_bytes_per_step": by["copy_read"],
                "boundary_copy_written_bytes_per_step": by["copy_written"],
                "kv_read_bytes_per_image": by["kv_per_image"],
                "kv_read_bytes_per_image_single_loop": by["kv_per_image_single_loop"],
                "kv_read_ratio": by["kv_per_image"] / by["kv_per_image_single_loop"],
                "kv_read_ratio_with_copy_writes": by["kv_per_image_with_writes"] / by["kv_per_image_single_loop"]})
    other_txt = ratio_txt = roof_txt = "-"
    other = None
    if history:
      other = time_ours(model, mesh, unshared(batch, n, history), 1)[0]
    elif hf is not None:
      try:
        other = time_hf(hf, batch, special, n)
      except Exception as err:  # the reference failing (e.g. another transformers) must not hide our figure
        print(f"transformers' generate failed: {type(err).__name__}: {str(err)[:200]}")
    if other is not None:
      row[f"{against}_images_per_s"] = b * n / other
      row["ratio"] = other / t
      other_txt, ratio_txt = f"{b * n / other:14.3f}", f"{other / t:6.2f}"
    if bw:
      row["roofline"] = by["must"] * n_tok / t / bw
      row["roofline_loop_read"] = by["loop"] * n_tok / t / bw
      roof_txt = f"{row['roofline']:8.1%}"
    print(f"{b:7d} {n:7d} {imgs:11.3f} {imgs * n_tok:11.1f} {t / n_tok * 1e3:8.1f} {other_txt:>14} {ratio_txt:>6} "
          f"{roof_txt:>8}")
    mb = lambda x: f"{x / 1e6:,.1f} MB"
    print(f"{'':9}per decode step (mean of {n_tok - 1}), {len(by['phase_lengths'])} phase(s): must read {mb(by['must'])} "
          f"(weights {mb(by['weights'])} + prefixes {mb(by['prefixes'])} + live KV {mb(by['live_kv'])}); loop reads "
          f"{mb(by['loop'])} (own KV {mb(by['own_kv'])} + pads {mb(by['copy_read'])}, pads write "
          f"{mb(by['copy_written'])})\n{'':9}per-sample KV read per image {mb(by['kv_per_image'])} = "
          f"{row['kv_read_ratio']:.3f}x one loop over the full cache ({mb(by['kv_per_image_single_loop'])}; "
          f"{row['kv_read_ratio_with_copy_writes']:.3f}x with the pads' writes); compile about {compile_s:.1f} s")
    if _JSON.value:
      with open(_JSON.value, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  app.run(main)
