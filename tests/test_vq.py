"""The vq stage: kill -9 and resume is bit-identical, the trained tokenizer goes into the model, the
optional perceptual term is the LPIPS of the reconstruction, and the pixel-level genre probe reads
the world's own posters right."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from flax import nnx
from PIL import Image

from test_janus_convert import flat_params
from test_lpips import reference, write_random_lpips
from test_sft import ROOT, plain_and_killed, run_main
from pgen_jax.data import synthetic
from pgen_jax.data.images import generation_target
from pgen_jax.models import Janus, make_mesh, preset
from pgen_jax.rewards.hf import load_lpips
from pgen_jax.setup import load_trained_tokenizer
from pgen_jax.train.vq_loop import codebook_usage, psnr, vq_loss


def vq_args(workdir, store, steps=12):
  return ["--config=configs/demo.py", "--config.stages=('prepare','vq')", f"--config.workdir={workdir}",
          f"--config.data.root={store}/world", f"--config.data.store={store}/data", f"--config.vq.num_steps={steps}",
          "--config.vq.batch_size=8", "--config.vq.crop=16", "--config.vq.ckpt_every=4", "--config.vq.log_every=4",
          "--config.vq.restart_every=3"]


def vq_params(workdir):
  model = Janus(preset("demo"), nnx.Rngs(0))
  before = flat_params(model.vqmodel)
  assert load_trained_tokenizer(ml_collections.ConfigDict({"workdir": str(workdir)}), model)
  return before, flat_params(model.vqmodel)


def test_vq_kill_minus_nine_and_resume_is_bit_identical(tmp_path):
  assert "resumed vq at step 8" in plain_and_killed(tmp_path, vq_args, "vq", 8)
  init, a = vq_params(tmp_path / "plain")
  _, b = vq_params(tmp_path / "killed")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert any((init[k] != a[k]).any() for k in a)  # trained, and loaded into a fresh model
  summary = json.loads((tmp_path / "plain" / "vq" / "summary.json").read_text())
  assert summary["heldout_items"] == 18 and 0 < summary["codebook"]["used"] <= 64
  assert np.isfinite(summary["psnr_heldout"])
  assert list((tmp_path / "plain" / "vq" / "grids").glob("*.png"))


def test_perceptual_term_adds_the_torch_lpips_of_the_reconstruction(tmp_path):
  """vq.perceptual = w adds w x the mean LPIPS distance between the reconstruction (the model's own
  decode of the batch's codes) and the input, LPIPS by the published formula in torch."""
  features, heads = write_random_lpips(tmp_path)
  lpips = load_lpips(tmp_path / "vgg16.pth", tmp_path / "vgg.pth", mesh=make_mesh(devices=jax.devices()[:1]))
  vq = Janus(preset("demo"), nnx.Rngs(0)).vqmodel
  graphdef, params, rest = nnx.split(vq, nnx.Param, ...)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  plain, _ = vq_loss(graphdef, params, rest, jnp.asarray(x), 0.25)
  loss, aux = vq_loss(graphdef, params, rest, jnp.asarray(x), 0.25, lpips, 0.5)
  rec = np.asarray(vq.decode(aux["codes"]), np.float32)
  with torch.no_grad():
    want = reference(features, heads, torch.tensor(rec).permute(0, 3, 1, 2), torch.tensor(x).permute(0, 3, 1, 2))
  np.testing.assert_allclose(float(aux["perceptual"]), want.mean().item(), rtol=1e-4)
  np.testing.assert_allclose(float(loss) - float(plain), 0.5 * want.mean().item(), rtol=1e-3)
  # ... and the stage trains with it: the term is logged
  run = run_main(ROOT, *vq_args(tmp_path / "run", tmp_path / "store", steps=4), "--config.vq.perceptual=0.5",
                 f"--config.reward_models.lpips_vgg={tmp_path / 'vgg16.pth'}", f"--config.reward_models.lpips_heads={tmp_path / 'vgg.pth'}")
  assert run.returncode == 0, run.stderr[-3000:]
  assert "vq step 4/4: l2" in run.stderr and ", lpips " in run.stderr
  assert (tmp_path / "run" / "vq" / "final").exists()


def test_psnr_by_hand():
  a = np.zeros((2, 4, 4, 3), np.uint8)
  b = a.copy()
  b[0] += 1           # MSE 1: 10 log10(255^2) = 48.1308 dB
  b[1, 0, 0, 0] = 48  # MSE 48^2 / 48 = 48: 10 log10(255^2 / 48)
  np.testing.assert_allclose(psnr(a, b), [48.1308036086791, 31.318391234923233], rtol=1e-9)
  usage = codebook_usage(np.array([[0, 0, 1, 3]]), 8)
  assert usage["used"] == 3 and usage["share"] == 3 / 8
  np.testing.assert_allclose(usage["perplexity"], np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))


def test_pixel_probe_reads_the_worlds_posters():
  """Every genre's posters, cut to the demo's 32px as the store does, are recognised from pixels alone;
  the label comes from the world's generator, not from the probe."""
  rng = np.random.default_rng(3)
  images, labels = [], []
  for g, genre in enumerate(synthetic.GENRES):
    for _ in range(20):
      poster = synthetic.poster(genre, rng, synthetic.WorldConfig().poster_size)
      images.append(generation_target(Image.fromarray(poster), 32))
      labels.append(g)
  images, labels = np.stack(images), np.array(labels)
  assert (synthetic.pixel_genre(images) == labels).mean() >= 0.95
  want_dir = [synthetic.DIRECTIONS.index(synthetic.SIGNATURES[synthetic.GENRES[g]][1]) for g in labels]
  assert (synthetic.stripe_direction(images) == want_dir).mean() >= 0.9
  # Users 1..6 prefer the genres in order: the probe's hit rate is the accuracy above.
  users = labels + 1
  assert synthetic.pixel_probe(images, users)["hit_rate"] >= 0.95
  # A flat grey image has no stripes to read and the colour of no genre: it cannot hit every genre.
  grey = np.full((6, 32, 32, 3), 128, np.uint8)
  assert synthetic.pixel_probe(grey, np.arange(1, 7))["hit_rate"] <= 1 / 6
  # The pixel reward: a poster scores above zero for the users who prefer its genre and highest for
  # them; a pure signature image (stripes at 0.7 x base on average) scores the hand-computed margin.
  margin = np.stack([synthetic.signature_margin(images, np.full(len(images), u)) for u in range(1, 7)], 1)
  assert (margin[np.arange(len(images)), labels] > 0).all()
  assert (margin.argmax(1) == labels).mean() >= 0.95
  colour, _ = synthetic.SIGNATURES["Horror"]
  flat = np.full((1, 32, 32, 3), np.round(0.7 * np.array(colour)), np.uint8)  # no stripes: luminance constant
  refs = {g: np.array([*(0.7 * np.array(c) / 255), *(0.3 * np.eye(3)[synthetic.DIRECTIONS.index(d)])])
          for g, (c, d) in synthetic.SIGNATURES.items()}
  feat = np.array([*(np.round(0.7 * np.array(colour)) / 255), 0.3, 0, 0])  # argmin picks the first: horizontal
  dist = {g: ((feat - r) ** 2).sum() for g, r in refs.items()}
  want = np.mean(list(dist.values())) - dist["Horror"]
  np.testing.assert_allclose(synthetic.signature_margin(flat, [4]), [want], rtol=1e-5)  # user 4 prefers Horror
