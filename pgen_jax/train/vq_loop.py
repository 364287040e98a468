"""The vq stage: trains the image tokenizer (the model's `vqmodel`, Janus's VQ architecture) on the
prepared items, for small-image experiments such as the demo; the SFT stage then uses it in place of
the configured one. The real Janus-Pro tokenizer is never trained: no shipped config runs this stage.

Loss: L2 reconstruction (+ vq.perceptual x the LPIPS-VGG distance of reconstruction and input, with
the frozen LPIPS weights every stage uses, reward_models.lpips_vgg + .lpips_heads) + codebook + beta x
commitment, both on the L2-normalised vectors the model's lookup uses, with a straight-through
estimator. Codes whose running usage falls below
vq.restart_below x the uniform rate are restarted, every vq.restart_every steps, on encoder outputs
of the current batch. Items whose index is a multiple of vq.holdout_every are never trained on; the
reconstruction PSNR is measured on them.

Everything random (batches, crops, restarts) derives from the state's key and step, so a resumed run
(from <workdir>/vq/latest) is bit-identical to an uninterrupted one on CPU. Writes under <workdir>/vq:
latest/ (orbax), tb/, grids/ (held-out posters | reconstructions), summary.json (PSNR, codebook
usage) and final/ (the tokenizer's parameters), which pgen_jax.setup.model_from_config puts into
the model of every later stage.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pgen_jax.data.pipeline import item_chunks
from pgen_jax.fileio import atomic_directory, write_json
from pgen_jax.models.janus import from_uint8, map_chunks, to_uint8
from pgen_jax.models.sharding import BATCH
from pgen_jax.models.vq import VQModel, l2_normalize
from pgen_jax.rewards.hf import load_lpips
from pgen_jax.setup import mesh_from_config, model_from_config, tokenizer_dir
from pgen_jax.train import harness, update
from pgen_jax.viz import save_grid


def split_items(n: int, holdout_every: int) -> tuple[np.ndarray, np.ndarray]:
  idx = np.arange(n)
  held = idx % holdout_every == 0
  return idx[~held], idx[held]


def _is_codebook(path) -> bool:
  return tuple(str(p) for p in path[-3:]) == ("quantize", "embedding", "embedding")


def vq_loss(graphdef, params, rest, x, beta: float, lpips=None, perceptual: float = 0.0):
  """(loss, aux) for images x in [-1, 1]; aux holds the codes and normalised latents for restarts.
  lpips: a frozen pgen_jax.rewards.lpips.LPIPS, whose mean distance enters with weight `perceptual`."""
  vq = nnx.merge(graphdef, params, rest)
  z = vq.quant_conv(vq.encoder(x))
  b, h, w, e = z.shape
  codes = vq.quantize.codes(jax.lax.stop_gradient(z))
  q = vq.quantize.lookup(codes, h)  # the normalised codebook rows, as the model's decode uses them
  zn = l2_normalize(z.astype(jnp.float32))
  codebook = jnp.mean((q - jax.lax.stop_gradient(zn)) ** 2)
  commit = jnp.mean((jax.lax.stop_gradient(q) - zn) ** 2)
  rec = vq.decoder(vq.post_quant_conv(zn + jax.lax.stop_gradient(q - zn))).astype(jnp.float32)
  l2 = jnp.mean((rec - x) ** 2)
  loss = l2 + codebook + beta * commit
  aux = {"l2": l2, "codebook": codebook, "commit": commit, "codes": codes, "z": zn.reshape(b * h * w, e)}
  if lpips is not None:
    aux["perceptual"] = jnp.mean(lpips(rec, x))
    loss = loss + perceptual * aux["perceptual"]
  return loss, aux


def train_step(graphdef, tx, c, batch_sharding, lpips_graphdef, images, state, rest, lpips_state):
  """One update on a batch drawn (and cropped) from `images` with the state's key; then restarts.
  lpips_graphdef/lpips_state: the split frozen LPIPS model, or None."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  k_pick, k_crop, k_restart = jax.random.split(key, 3)
  n, s = images.shape[0], images.shape[1]
  pick = jax.random.choice(k_pick, n, (c.batch_size,), replace=False)
  crop = c.crop or s
  oy, ox = jax.random.randint(k_crop, (2,), 0, s - crop + 1)
  x = jax.lax.dynamic_slice(images[pick], (0, oy, ox, 0), (c.batch_size, crop, crop, 3))
  x = jax.lax.with_sharding_constraint(x.astype(jnp.float32) / 127.5 - 1.0, batch_sharding)
  lpips = nnx.merge(lpips_graphdef, lpips_state) if lpips_graphdef is not None else None
  (loss, aux), grads = jax.value_and_grad(
      lambda p: vq_loss(graphdef, p, rest, x, c.beta, lpips, c.perceptual), has_aux=True)(state["params"])
  new, metrics = update.guarded_update(tx, state, loss, grads)

  # Running usage, 1.0 = the uniform rate; dead codes restart on random latents of this batch.
  k = state["usage"].shape[0]
  counts = jnp.zeros((k,), jnp.float32).at[aux["codes"].reshape(-1)].add(1.0)
  usage = c.usage_decay * state["usage"] + (1 - c.usage_decay) * counts * k / aux["codes"].size
  due = (new["step"] % c.restart_every == 0) & (new["step"] <= c.num_steps - c.restart_every)
  dead = due & (usage < c.restart_below)
  fresh = aux["z"][jax.random.choice(k_restart, aux["z"].shape[0], (k,), replace=aux["z"].shape[0] < k)]
  restart = lambda path, p: jnp.where(dead[:, None], fresh.astype(p.dtype), p) if _is_codebook(path) else p
  new["params"] = jax.tree_util.tree_map_with_path(restart, new["params"])
  new["usage"] = jnp.where(dead, 1.0, usage)
  metrics = {**metrics, **{k: aux[k] for k in ("l2", "codebook", "commit", "perceptual") if k in aux},
             "restarted": jnp.sum(dead), "live_codes": jnp.sum(usage >= c.restart_below)}
  return new, metrics


def reconstruct(vq: VQModel, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(reconstructions uint8, tokens) through the model's own encode/decode."""
  tokens = map_chunks(jax.jit(lambda x: vq.encode(x)), from_uint8(images), batch)
  return map_chunks(jax.jit(lambda t: to_uint8(vq.decode(t))), tokens, batch), tokens


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-image PSNR in dB of uint8 images (data range 255)."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
  return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def codebook_usage(tokens: np.ndarray, k: int) -> dict:
  counts = np.bincount(tokens.reshape(-1), minlength=k)
  p = counts / counts.sum()
  return {"used": int((counts > 0).sum()), "size": k, "share": float((counts > 0).mean()),
          "perplexity": float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))}


def run_vq(cfg) -> dict:
  out, c = tokenizer_dir(cfg).parent, cfg.vq
  if (done := harness.finished("vq", out)) is not None:
    return done
  mesh = mesh_from_config(cfg)
  vq = model_from_config(cfg, mesh).vqmodel
  graphdef, params, rest = nnx.split(vq, nnx.Param, ...)
  images = np.concatenate([chunk for chunk, _ in item_chunks(cfg)])  # the demo's few hundred: sampled in jit
  train_idx, held_idx = split_items(len(images), c.holdout_every)
  if len(train_idx) < c.batch_size or not len(held_idx):
    raise ValueError(f"vq.batch_size: {c.batch_size} needs at least as many training items; the store has "
                     f"{len(train_idx)} (and {len(held_idx)} held out with vq.holdout_every={c.holdout_every})")
  replicated = NamedSharding(mesh, P())
  train_images = jax.device_put(images[train_idx], replicated)
  tx = update.make_optimizer(c.lr, c.warmup_steps, c.num_steps, 0.9, 0.99, 0.0, c.clip)
  state = update.init_state(params, tx, cfg.seed, mesh)
  # numpy: a jax array put onto a sharding over several processes comes out broken (models.sharding.put_global)
  state["usage"] = jax.device_put(np.ones((vq.quantize.embedding.num_embeddings,), np.float32), replicated)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  lpips_graphdef, lpips_state = (nnx.split(load_lpips(cfg.reward_models.lpips_vgg, cfg.reward_models.lpips_heads,
                                                                mesh=mesh))
                                 if c.perceptual else (None, None))
  step_fn = jax.jit(functools.partial(train_step, graphdef, tx, c, NamedSharding(mesh, P(BATCH)), lpips_graphdef),
                    donate_argnums=(1,),
                    in_shardings=(replicated, state_sh, jax.tree.map(lambda x: x.sharding, rest),
                                  jax.tree.map(lambda x: x.sharding, lpips_state)),
                    out_shardings=(state_sh, replicated))
  loop = harness.Harness("vq", out, num_steps=c.num_steps, log_every=c.log_every, ckpt_every=c.ckpt_every,
                         keep=c.keep)
  step, state, _ = loop.resume(state)

  def log_line(step, state, m):
    if m is not None:
      logging.info("vq step %d/%d: l2 %.4f%s, live codes %d, restarted %d", step, c.num_steps, m["l2"],
                   f", lpips {m['perceptual']:.4f}" if "perceptual" in m else "", m["live_codes"], m["restarted"])

  state = loop.run(step, state, lambda _, state: step_fn(train_images, state, rest, lpips_state), after=log_line)
  loop.ckpts.wait()
  nnx.update(vq, state["params"])
  recs, tokens = reconstruct(vq, images)
  summary = {"steps": c.num_steps, "psnr_heldout": float(psnr(recs[held_idx], images[held_idx]).mean()),
             "psnr_train": float(psnr(recs[train_idx], images[train_idx]).mean()),
             "heldout_items": int(len(held_idx)), "codebook": codebook_usage(tokens, vq.quantize.embedding.num_embeddings),
             "skipped_steps": int(jax.device_get(state["skipped"]))}
  rows = held_idx[:8]
  save_grid(images[rows][:, None], recs[rows], images[rows], out, c.num_steps, loop.writer)
  loop.writer.write_scalars(c.num_steps, {"psnr_heldout": summary["psnr_heldout"],
                                          "codebook_used": summary["codebook"]["used"]})
  loop.writer.flush()
  write_json(out / "summary.json", summary)
  with atomic_directory(out / "final") as tmp, ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp / "params", nnx.to_pure_dict(nnx.state(vq, nnx.Param)))
  loop.close()
  logging.info("vq done: %s", json.dumps(summary))
  return summary
