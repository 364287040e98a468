"""SFT: the loss against transformers' modules, the non-finite guard, kill-and-resume (the demo: test_demo.py)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from hf_janus import SIZES, hf_model
from test_janus_convert import flat_params
from pgen_jax.models import load_janus, make_mesh
from pgen_jax.train import sft, update

ROOT = Path(__file__).resolve().parents[1]


def test_image_loss_equals_teacher_forced_transformers(tmp_path):
  hf = hf_model(seed=41, **SIZES["gqa"])
  hf.save_pretrained(tmp_path)
  ours = load_janus(tmp_path, mesh=make_mesh(devices=jax.devices()[:1]))
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 300, (2, 7)).astype(np.int32)
  ids[1, :2] = 0  # left padding
  mask = (np.arange(7)[None] >= np.array([[0], [2]])).astype(np.int32)
  targets = rng.integers(0, 64, (2, 16)).astype(np.int32)
  with torch.no_grad():
    emb = torch.cat([hf.get_input_embeddings()(torch.tensor(ids, dtype=torch.long)),
                     hf.prepare_embeddings_for_image_generation(torch.tensor(targets[:, :-1], dtype=torch.long))], 1)
    full = torch.cat([torch.tensor(mask), torch.ones(2, 15, dtype=torch.long)], 1)
    pos = (full.cumsum(-1) - 1).clamp(min=0)
    h = hf.model.language_model(inputs_embeds=emb, attention_mask=full, position_ids=pos).last_hidden_state
    logits = hf.model.generation_head(h[:, 6:])
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), torch.tensor(targets, dtype=torch.long).reshape(-1))
  got = sft.image_loss(ours, jnp.asarray(ids), jnp.asarray(mask), None, jnp.asarray(targets))
  np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)


def test_lr_scales_multiply_one_parts_first_adam_step():
  from pgen_jax.models import Janus, tiny
  parts = ("language_model", "aligner", "vision_model")
  _, params, _ = nnx.split(Janus(tiny(), nnx.Rngs(0)), update.trainable_filter(parts), ...)
  lr = 1e-3
  tx = update.make_optimizer(lr, 1, 10, 0.9, 0.95, 0.0, 1e9, {"aligner": 10.0, "vision_model": 0.3})
  leaves = jax.tree_util.tree_leaves_with_path(params)
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) + 0.5, jnp.float32), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step, bias-corrected: m = g, v = g^2, so the update is -lr * g / (|g| + eps).
  scale = {"language_model": 1.0, "aligner": 10.0, "vision_model": 0.3}
  seen = set()
  for (path, g), (_, u) in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves_with_path(updates)):
    part = path[0].key
    seen.add(part)
    g = np.asarray(g, np.float64)
    np.testing.assert_allclose(np.asarray(u), -lr * scale[part] * g / (np.abs(g) + 1e-8), rtol=1e-5, atol=1e-9)
  assert seen == set(parts) and len(leaves) > 3


def test_non_finite_steps_are_skipped_and_counted():
  from pgen_jax.models import Janus, tiny
  model = Janus(tiny(), nnx.Rngs(0))
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
  tx = update.make_optimizer(1e-2, 1, 10, 0.9, 0.95, 0.0, 1.0)
  state = update.init_state(params, tx)
  rng = np.random.default_rng(0)
  n = model.config.num_image_tokens
  ids = np.concatenate([np.ones((2, 1)), np.full((2, 1), 317), np.full((2, n), 319), np.full((2, 1), 318),
                        np.full((2, 1), 317)], 1).astype(np.int32)
  batch = {"ids": ids, "uncond": ids, "mask": np.ones_like(ids),
           "history": rng.integers(0, 255, (2, 1, 16, 16, 3)).astype(np.uint8),
           "target": rng.integers(0, 255, (2, 16, 16, 3)).astype(np.uint8)}
  step = jax.jit(lambda s, b: sft.train_step(graphdef, tx, sft.StepConfig(uncond_prob=0.0), s, frozen, b))
  before = jax.tree.map(np.asarray, state["params"])
  bad_frozen = jax.tree.map(lambda x: x, frozen)  # a NaN in a frozen weight poisons loss and gradients
  bad_frozen["vision_model"]["post_layernorm"]["scale"][...] = jnp.full_like(
      bad_frozen["vision_model"]["post_layernorm"]["scale"][...], jnp.nan)
  bad_step = jax.jit(lambda s, b: sft.train_step(graphdef, tx, sft.StepConfig(uncond_prob=0.0), s, bad_frozen, b))
  state, m = bad_step(state, batch)
  assert not np.isfinite(float(m["loss"])) and int(m["skipped"]) == 1 and int(m["bad_streak"]) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state["params"], before)
  for _ in range(2):  # two good steps
    state, m = step(state, batch)
  assert np.isfinite(float(m["loss"])) and int(m["skipped"]) == 1 and int(m["bad_streak"]) == 0
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool((np.asarray(a) != b).any()), state["params"], before))
  assert any(changed)


def test_accumulated_slices_on_eight_devices_equal_the_whole_batch_on_one():
  """grad_accum splits the batch into strided slices (each split over the devices as the batch is): with state and
  batch sharded over 8 devices, their mean loss and gradient are the whole batch's on one device."""
  import optax
  from pgen_jax.models import Janus, tiny
  from pgen_jax.models.sharding import place_on_mesh, to_device
  rng = np.random.default_rng(3)
  model = Janus(tiny(), nnx.Rngs(2))
  n, b = model.config.num_image_tokens, 16
  ids = np.concatenate([np.ones((b, 1)), np.full((b, 1), 317), np.full((b, n), 319), np.full((b, 1), 318),
                        np.full((b, 1), 317)], 1).astype(np.int32)
  mask = (np.arange(ids.shape[1])[None] >= rng.integers(0, 2, (b, 1))).astype(np.int32)  # some rows padded
  batch = {"ids": ids, "uncond": ids, "mask": mask, "history": rng.integers(0, 255, (b, 1, 16, 16, 3)).astype(np.uint8),
           "target_tokens": rng.integers(0, 64, (b, n)).astype(np.int32)}
  tx = optax.sgd(0.5)

  def step(accum, mesh=None):
    m = model if mesh is None else place_on_mesh(model, mesh)
    graphdef, params, frozen = nnx.split(m, update.trainable_filter(update.TRAINABLE_DEFAULT), ...)
    fn = jax.jit(lambda s, bt: sft.train_step(graphdef, tx, sft.StepConfig(grad_accum=accum, uncond_prob=0.0),
                                              s, frozen, bt))
    state, metrics = fn(update.init_state(params, tx, mesh=mesh), batch if mesh is None else to_device(batch, mesh))
    return float(metrics["loss"]), jax.tree.map(np.asarray, state["params"])

  loss, params = step(1, make_mesh(devices=jax.devices()[:1]))
  got_loss, got = step(2, make_mesh())
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6), got, params)


def run_main(cwd, *args, log=None):
  cmd = [sys.executable, "-m", "pgen_jax.main", *args]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  if log is not None:  # in the background; its (long) log goes to a file, not a pipe that could fill
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def sft_args(workdir, store, steps=24):
  return ["--config=configs/demo.py", "--config.stages=('prepare','sft')", f"--config.workdir={workdir}",
          f"--config.data.root={store}/world", f"--config.data.store={store}/data", f"--config.sft.num_steps={steps}",
          "--config.sft.ckpt_every=6", "--config.sft.eval_every=12", "--config.sft.log_every=6",
          "--config.sft.genre_probe=False"]


def kill_at_checkpoint(args, checkpoint: Path, log: Path, wait: float = 300) -> None:
  """Runs the job in the background and kill -9s it as soon as `checkpoint` exists (or after `wait` s)."""
  proc = run_main(ROOT, *args, log=log)
  deadline = time.time() + wait
  while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  if not checkpoint.exists():
    proc.kill()  # not left running in the background
    proc.wait()
  assert checkpoint.exists(), log.read_text()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def final_params(workdir, stage="sft"):
  return flat_params(load_janus(Path(workdir) / stage / "final", mesh=make_mesh(devices=jax.devices()[:1])))


def plain_and_killed(tmp_path, args, stage: str, kill_at: int) -> str:
  """Runs `args(workdir, store)` through in <tmp>/plain, and in <tmp>/killed kill -9s it once checkpoint
  `kill_at` of `stage` exists and reruns it to the end; returns the rerun's log."""
  store = tmp_path / "shared"
  plain = run_main(ROOT, *args(tmp_path / "plain", store))
  assert plain.returncode == 0, plain.stderr[-3000:]
  kill_at_checkpoint(args(tmp_path / "killed", store), tmp_path / "killed" / stage / "latest" / str(kill_at),
                     tmp_path / "killed.log")
  assert not (tmp_path / "killed" / stage / "final").exists()
  resumed = run_main(ROOT, *args(tmp_path / "killed", store))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return resumed.stderr


def assert_same_final(tmp_path) -> None:
  """The plain and the killed-and-resumed runs' final parameters, bit for bit."""
  a, b = final_params(tmp_path / "plain"), final_params(tmp_path / "killed")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_kill_minus_nine_and_resume_is_bit_identical(tmp_path):
  assert "resumed SFT at step" in plain_and_killed(tmp_path, sft_args, "sft", 12)
  assert_same_final(tmp_path)


def test_repeated_non_finite_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  store = tmp_path / "shared"
  args = sft_args(tmp_path / "run", store, steps=6)
  assert run_main(ROOT, *args).returncode == 0
  shutil.rmtree(tmp_path / "run" / "sft" / "final")  # pretend the run goes on for longer
  (tmp_path / "run" / "sft" / "summary.json").unlink()
  before = sorted(p.name for p in (tmp_path / "run" / "sft" / "latest").iterdir())
  bad = run_main(ROOT, *sft_args(tmp_path / "run", store, steps=30), "--keep_old_results", "--config.sft.max_bad_steps=3",
                 "--config.sft.lr=1e30", "--config.sft.clip=1e30", "--config.sft.warmup_steps=1")
  assert bad.returncode != 0
  assert "non-finite" in bad.stderr and "last good checkpoint is step 6" in bad.stderr
  assert sorted(p.name for p in (tmp_path / "run" / "sft" / "latest").iterdir()) == before



def test_pretokenized_targets_are_each_batch_items_own_tokens(tmp_path):
  """sft.pretokenize: the table's tokens for a loader batch are what the frozen VQ makes of that batch's
  target images, and the SFT loss from them equals the loss that tokenizes in the step."""
  from configs.demo import get_config
  from pgen_jax.data.pipeline import loader_from_config, prepare_from_config
  from pgen_jax.models import Janus, preset
  from pgen_jax.models.janus import from_uint8
  from pgen_jax.sampling.prompter import Prompter
  from pgen_jax.train.item_tokens import ItemTokens

  cfg = get_config()
  cfg.workdir, cfg.data.root = str(tmp_path), str(tmp_path / "world")
  prepare_from_config(cfg)
  model = Janus(preset("demo"), nnx.Rngs(3), dtype=jnp.float32, param_dtype=jnp.float32)
  table = ItemTokens.build(cfg, model, chunk=50)  # 144 items: the last chunk is padded
  assert table.tokens.shape == (144, model.config.num_image_tokens)
  raw = next(iter(loader_from_config(cfg, "train", batch_size=8, seed=1)))
  raw = {k: np.array(v) for k, v in raw.items()}
  batch = Prompter(cfg, model.config)(raw)
  pre = table.replace_target(batch, raw)
  assert "target" not in pre
  np.testing.assert_array_equal(pre["target_tokens"], model.get_image_tokens(from_uint8(raw["target"])))
  graphdef, params, frozen = nnx.split(model, update.trainable_filter(("language_model",)), ...)
  key, step_cfg = jax.random.key(0), sft.StepConfig(uncond_prob=0.5)
  in_step = sft.batch_loss(graphdef, params, frozen, batch, key, step_cfg)
  np.testing.assert_allclose(sft.batch_loss(graphdef, params, frozen, pre, key, step_cfg), in_step, rtol=1e-6)
  try:
    table(np.array([10_000]))
  except ValueError as e:
    assert "item 10000" in str(e)
  else:
    raise AssertionError("an unknown item id was not named")
