"""The eval stage's comparison on the synthetic world with tiny random CLIP, DINOv2 and LPIPS-VGG: every
method's per-image metrics equal the torch references (transformers' CLIP and DINOv2, pytorch_msssim, the
LPIPS formula) run on the PNGs it saved; a removed method is redone alone on a rerun; report.html opens
in headless Chromium with every image loaded and one table row per method."""

import hashlib
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import pytorch_msssim
import torch
import transformers as T
from PIL import Image

from fake_sites import closed_port_url
from pgen_jax.rewards.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, preprocess
from pgen_jax.scorer.nima import NIMA, load_nima, score as nima_score
from pgen_jax.data.synthetic import SIGNATURES
from test_clip import hf_clip
from test_dino import dinov2
from test_lpips import reference as lpips_reference, vgg16_features
from test_rewards import cos100
from test_sft import ROOT, run_main

# One worker runs this module: its module fixture (minutes) is then made once, not once per worker.
pytestmark = pytest.mark.xdist_group("eval")

RECS = ["random", "pop", "itemknn", "lastitem", "sasrec"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("eval")
  hc, hd = hf_clip("gelu", 2), dinov2(28)
  hc.save_pretrained(tmp / "clip")
  # CLIP's BPE files beside the weights, as the hub ships them: one symbol per character (no merges),
  # <end> the highest id (this config pools at the highest id, as open_clip does).
  symbols = [c for c in "abcdefghijklmnopqrstuvwxyz"] + [c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz0123456789()|,-"]
  vocab = {sym: i + 1 for i, sym in enumerate(symbols)}
  vocab.update({"<|startoftext|>": 96, "<|endoftext|>": 98})
  (tmp / "clip" / "vocab.json").write_text(json.dumps(vocab))
  (tmp / "clip" / "merges.txt").write_text("#version: 0.2\n")
  hd.save_pretrained(tmp / "dino")
  torch.manual_seed(0)
  features = vgg16_features().eval()
  torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp / "vgg16.pth")
  heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
  torch.save(heads, tmp / "vgg.pth")
  torch.save({"params": NIMA().eval().state_dict()}, tmp / "nima.pth")  # the job starts its scorer with it
  args = ["--config=configs/demo.py", f"--config.reward_models.scorer_nima={tmp / 'nima.pth'}",
          f"--config.reward_models.scorer_url={closed_port_url()}", "--config.reward_models.scorer_device=cpu",
          "--config.eval.scorer_terms=('nima',)", f"--config.workdir={tmp}/run", f"--config.data.root={tmp}/world",
          "--config.sft.num_steps=10", "--config.sft.genre_probe=False", "--config.sft.eval_every=10",
          f"--config.eval.clip={tmp / 'clip'}", f"--config.eval.dino={tmp / 'dino'}", "--config.reward_models.dino_size=28",
          f"--config.reward_models.lpips_vgg={tmp / 'vgg16.pth'}", f"--config.reward_models.lpips_heads={tmp / 'vgg.pth'}",
          "--config.eval.samples=2", "--config.eval.windows=5", "--config.eval.batch_size=2",
          "--config.eval.report_users=5", "--config.eval.sasrec.epochs=3"]
  run = run_main(ROOT, *args, "--config.stages=('prepare','sft','eval')")
  assert run.returncode == 0, run.stderr[-3000:]
  return tmp, args, (hc, hd, features, heads)


def _png(path):
  return np.asarray(Image.open(path).convert("RGB"))


def test_every_method_is_measured_like_the_references(evaluated):
  tmp, _, (hc, hd, features, heads) = evaluated
  out = tmp / "run" / "eval"
  res = json.loads((out / "results.json").read_text())
  assert list(res["methods"]) == RECS + ["zero_shot", "sft"]  # no grpo result: no grpo row
  assert res["windows"] == 5 and res["samples"] == 2
  win = json.loads((out / "windows.json").read_text())
  # only users held out of training (the demo's data.holdout_users = 12: first by sha256 among positive users)
  ratings = [line.split("::") for line in (tmp / "world" / "ratings.dat").read_text().splitlines()]
  positive = {int(u) for u, _, r, _ in ratings if float(r) >= 4.0}
  held = set(sorted(positive, key=lambda u: hashlib.sha256(str(u).encode()).hexdigest())[:12])
  assert set(win["users"]) <= held and len(set(win["users"])) == 5

  def torch_in(x, size, crop, mean, std):
    return torch.tensor(np.asarray(preprocess(jnp.asarray(x), size, crop, mean, std))).permute(0, 3, 1, 2)

  with torch.no_grad():
    ci = lambda x: hc.get_image_features(pixel_values=torch_in(x, 30, 30, CLIP_MEAN, CLIP_STD)).pooler_output.numpy()
    di = lambda x: hd(pixel_values=torch_in(x, 32, 28, IMAGENET_MEAN, IMAGENET_STD)).pooler_output.numpy()
    h = win["history_len"]
    hist = np.stack([[_png(out / "windows" / f"{w:05d}_h{j}.png") for j in range(h)] for w in range(5)])
    target = np.stack([_png(out / "windows" / f"{w:05d}_target.png") for w in range(5)])
    future = np.stack([_png(out / "windows" / f"{w:05d}_f0.png") for w in range(5)])
    # cts: the target's "title | genres" from movies.dat, tokenized open_clip's way for 16 positions
    movies = {int(m): (t, g) for m, t, g in (line.split("::") for line in
                                            (tmp / "world" / "movies.dat").read_text("latin-1").splitlines())}
    tok = T.CLIPTokenizer(str(tmp / "clip" / "vocab.json"), str(tmp / "clip" / "merges.txt"))
    ids = np.zeros((5, 16), np.int64)
    for w, item in enumerate(np.array(win["items"])[:, h]):
      title, genres = movies[int(item)]
      row = tok(f"{title} | {genres.replace('|', ', ')}")["input_ids"]
      row = row[:15] + [98] if len(row) > 16 else row
      assert 98 not in row[:-1]  # every character is in the vocabulary
      ids[w, :len(row)] = row
    target_text = hc.get_text_features(input_ids=torch.tensor(ids)).pooler_output.numpy()
    nima = load_nima(tmp / "nima.pth")
    for method in ["pop", "lastitem", "sft"]:
      gen = np.stack([[_png(out / "methods" / method / "images" / f"{w:05d}_s{k}.png") for k in range(2)]
                      for w in range(5)])
      flat, tgt = gen.reshape(10, 32, 32, 3), np.repeat(target, 2, 0)
      g = ci(flat).reshape(5, 2, -1)
      hc_emb = ci(hist.reshape(-1, 32, 32, 3)).reshape(5, h, -1)
      unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
      lp = lpips_reference(features, heads, *(torch.tensor(x.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
                                              for x in (flat, tgt))).numpy()
      ref = {"cis_target": cos100(g, ci(target)[:, None]),
             "dis_target": cos100(di(flat).reshape(5, 2, -1), di(target)[:, None]),
             "cis_history": cos100(g, unit(hc_emb).mean(1)[:, None]),
             "cis_history_items": np.mean([cos100(g, hc_emb[:, j][:, None]) for j in range(h)], 0),
             "cis_future": cos100(g, ci(future)[:, None]),
             "ssim_target": pytorch_msssim.ssim(torch.tensor(flat).permute(0, 3, 1, 2).float(),
                                                torch.tensor(tgt).permute(0, 3, 1, 2).float(), data_range=255,
                                                size_average=False).numpy().reshape(5, 2),
             "lpips_target": lp.reshape(5, 2)}
      # DINO against the history and the future as CLIP above (one future item here: the max is the mean)
      dg, dh = di(flat).reshape(5, 2, -1), di(hist.reshape(-1, 32, 32, 3)).reshape(5, h, -1)
      ref.update({"dis_history": cos100(dg, unit(dh).mean(1)[:, None]),
                  "dis_history_items": np.mean([cos100(dg, dh[:, j][:, None]) for j in range(h)], 0),
                  "dis_future": cos100(dg, di(future)[:, None]), "dis_future_max": cos100(dg, di(future)[:, None]),
                  "cis_future_max": ref["cis_future"]})
      # the pixel probe: the nearest signature (hand_distances) is the window's user's genre's
      ref["pixel_genre_hit"] = np.array([[float(np.argmin(hand_distances(x)) == (int(win["users"][w]) - 1) % 6)
                                          for x in gen[w]] for w in range(5)])
      # cross_user: each image's mean CLIP cosine to the images of the other users' windows (5 users here)
      owner, pairs = np.repeat(np.array(win["users"]), 2), cos100(g.reshape(10, 1, -1), g.reshape(1, 10, -1))
      ref["cross_user"] = np.array([pairs[i][owner != owner[i]].mean() for i in range(10)]).reshape(5, 2)
      ref["cts"] = cos100(g, target_text[:, None])
      ref["nima"] = np.asarray(nima_score(nima, list(flat)), np.float64).reshape(5, 2)
      values = np.load(out / "methods" / method / "values.npz")
      for name, want in ref.items():
        np.testing.assert_allclose(values[name], want, atol=2e-3, rtol=1e-3, err_msg=f"{method} {name}")
      assert set(np.unique(values["genre_hit"])) <= {0.0, 1.0}
      m = res["methods"][method]["metrics"]["cis_target"]
      assert abs(m["mean"][0] - want_mean(ref["cis_target"], False)) < 2e-3
      assert abs(m["best"][0] - want_mean(ref["cis_target"], True)) < 2e-3
      assert m["mean"][1] <= m["mean"][0] <= m["mean"][2]
    # LastItem shows the history's last item first: its CLIP similarity to the target is the last item's
    last = np.load(out / "methods" / "lastitem" / "values.npz")
    np.testing.assert_allclose(last["cis_target"][:, 0], cos100(hc_emb[:, -1], ci(target)), atol=2e-3)
  for name in RECS:
    r = res["methods"][name]["ranking"]
    assert 0 <= r["hr@1"] <= r["hr@10"] <= 1
  assert set(res["differences"]) == {"zero_shot", "sft"}
  md = (out / "results.md").read_text()
  assert all(f"| {m} |" in md for m in res["methods"])


def want_mean(v, best):
  return float((v.max(1) if best else v.mean(1)).mean())


def test_generators_paired_on_the_same_windows(evaluated):
  """results.json's paired["sft-zero_shot"][metric]: the mean over windows of sft's per-window mean minus
  zero_shot's, and its 95% bootstrap interval, recomputed here from the saved values (the demo's 500 resamples
  of the 5 windows, seed eval.seed = 0)."""
  tmp, _, _ = evaluated
  out = tmp / "run" / "eval"
  res = json.loads((out / "results.json").read_text())
  assert list(res["paired"]) == ["sft-zero_shot"]
  sft, zero = (np.load(out / "methods" / m / "values.npz") for m in ("sft", "zero_shot"))
  draws = np.random.default_rng(0).integers(0, 5, (500, 5))
  for metric in ("cis_target", "lpips_target", "pixel_genre_hit", "nima"):
    diff = sft[metric].astype(np.float64).mean(1) - zero[metric].astype(np.float64).mean(1)
    boot = np.sort(diff[draws].mean(1))
    # numpy's default percentile: linear between the order statistics at 0.025 * 499 and 0.975 * 499
    low = boot[12] + 0.475 * (boot[13] - boot[12])
    high = boot[486] + 0.525 * (boot[487] - boot[486])
    np.testing.assert_allclose(res["paired"]["sft-zero_shot"][metric], [diff.mean(), low, high], atol=1e-9,
                               err_msg=metric)
  md = (out / "results.md").read_text()
  assert "| sft-zero_shot | " in md.split("## Generators paired")[1]



def hand_distances(image) -> list[float]:
  """An image's squared distance to each genre's signature, counted here from the world's definition
  (synthetic.py's header): mean colour / 255 and the stripe direction along which neighbours differ least,
  against each genre's (0.7 x colour / 255, 0.3 x one-hot direction), genres in order."""
  x = image.astype(np.float64)
  lum = x.mean(-1)
  along = [np.abs(lum[:, 1:] - lum[:, :-1]).mean(), np.abs(lum[1:] - lum[:-1]).mean(),
           np.abs(lum[1:, :-1] - lum[:-1, 1:]).mean()]
  feats = np.concatenate([x.mean((0, 1)) / 255, 0.3 * np.eye(3)[int(np.argmin(along))]])
  dirs = ("horizontal", "vertical", "diagonal")
  refs = [np.concatenate([0.7 * np.array(c) / 255, 0.3 * np.eye(3)[dirs.index(d)]]) for c, d in SIGNATURES.values()]
  return [((feats - r) ** 2).sum() for r in refs]


def hand_margin(image, user) -> float:
  """The world's graded judgement: the mean distance less the user's genre's (user u prefers genre (u - 1) mod 6)."""
  dist = hand_distances(image)
  return float(np.mean(dist) - dist[(int(user) - 1) % len(dist)])


def test_pixel_margin_is_the_worlds_graded_judgement(evaluated):
  """eval's pixel_margin of the saved images (report_users windows) against hand_margin, for every method."""
  tmp, _, _ = evaluated
  out = tmp / "run" / "eval"
  users = json.loads((out / "windows.json").read_text())["users"]
  checked = 0
  for method in RECS + ["zero_shot", "sft"]:
    got = np.load(out / "methods" / method / "values.npz")["pixel_margin"]
    for f in sorted((out / "methods" / method / "images").glob("*_s*.png")):
      w, k = int(f.name[:5]), int(f.stem.split("_s")[1])
      np.testing.assert_allclose(got[w, k], hand_margin(_png(f), users[w]), atol=1e-5, err_msg=f"{method} {f.name}")
      checked += 1
  assert checked >= 5 * 2 * 7  # every saved image of the 7 methods


def test_a_removed_method_is_redone_alone(evaluated):
  tmp, args, _ = evaluated
  out = tmp / "run" / "eval"
  before = {m: os.stat(out / "methods" / m / "values.npz").st_mtime_ns for m in RECS + ["zero_shot", "sft"]}
  kept = np.load(out / "methods" / "pop" / "values.npz")["cis_target"]
  shutil.rmtree(out / "methods" / "pop")
  run = run_main(ROOT, *args, "--config.stages=('eval',)")
  assert run.returncode == 0, run.stderr[-3000:]
  after = {m: os.stat(out / "methods" / m / "values.npz").st_mtime_ns for m in before}
  assert [m for m in before if before[m] != after[m]] == ["pop"]
  np.testing.assert_allclose(np.load(out / "methods" / "pop" / "values.npz")["cis_target"], kept, atol=1e-5)


def test_report_opens_in_headless_chromium(evaluated):
  from playwright.sync_api import sync_playwright
  tmp, _, _ = evaluated
  out = tmp / "run" / "eval"
  methods = list(json.loads((out / "results.json").read_text())["methods"])
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  assert chromium, "the distribution's chromium package is needed (.ci/run installs it)"
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto((out / "report.html").as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
    # per user: history (3) + target + 7 methods x 2 samples
    assert len(widths) == 5 * (3 + 1 + len(methods) * 2) and min(widths) > 0
    for mode in ("mean", "best"):
      rows = page.eval_on_selector_all(f'table.results[data-mode="{mode}"] tbody tr',
                                       "els => els.map(e => e.cells[0].textContent)")
      assert rows == methods, rows
    assert page.eval_on_selector_all("figure.curve polyline", "els => els.length") >= 1  # the SFT loss
    paired = page.eval_on_selector_all("table.paired tr td:first-child", "els => els.map(e => e.textContent)")
    assert paired == ["sft-zero_shot"]
    page.screenshot(path=str(out / "report.png"), full_page=True)
    browser.close()
  assert (out / "report.png").stat().st_size > 10_000


def test_a_retrained_generator_is_measured_again(evaluated):
  """A row names the checkpoint it measured: SFT retrained (here at another learning rate, --redo=sft) makes
  eval redo the sft row alone, though eval's own settings did not change."""
  tmp, args, _ = evaluated
  out = tmp / "run" / "eval"
  methods = RECS + ["zero_shot", "sft"]
  before = {m: os.stat(out / "methods" / m / "values.npz").st_mtime_ns for m in methods}
  old = np.load(out / "methods" / "sft" / "values.npz")["cis_target"]
  old_digest = json.loads((out / "methods" / "sft" / "method.json").read_text())["measured"]
  run = run_main(ROOT, *args, "--config.sft.lr=1e-2", "--redo=sft", "--config.stages=('sft','eval')")
  assert run.returncode == 0, run.stderr[-3000:]
  after = {m: os.stat(out / "methods" / m / "values.npz").st_mtime_ns for m in methods}
  assert [m for m in methods if before[m] != after[m]] == ["sft"]
  assert json.loads((out / "methods" / "sft" / "method.json").read_text())["measured"] != old_digest
  assert np.abs(np.load(out / "methods" / "sft" / "values.npz")["cis_target"] - old).max() > 1e-3
  assert "was measured on another checkpoint" in run.stderr
