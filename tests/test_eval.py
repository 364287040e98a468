"""The eval stage on the synthetic world with tiny random CLIP and DINOv2: every image's metrics equal
the torch models (and pytorch_msssim) run on the PNGs it wrote; only held-out users are evaluated."""

import hashlib
import json

import jax.numpy as jnp
import numpy as np
import pytorch_msssim
import torch
from PIL import Image

from pgen_jax.rewards.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, preprocess
from test_clip import hf_clip
from test_dino import dinov2
from test_rewards import cos100
from test_sft import ROOT, run_main


def test_eval_stage_measures_the_generated_images(tmp_path):
  hc, hd = hf_clip("gelu", 2), dinov2(28)
  hc.save_pretrained(tmp_path / "clip")
  hd.save_pretrained(tmp_path / "dino")
  run = run_main(ROOT, "--config=configs/demo.py", "--config.stages=('prepare','sft','eval')",
                 f"--config.workdir={tmp_path}/run", f"--config.data.root={tmp_path}/world",
                 "--config.sft.num_steps=10", "--config.sft.genre_probe=False", "--config.sft.eval_every=10",
                 f"--config.grpo.clip={tmp_path / 'clip'}", f"--config.grpo.dino={tmp_path / 'dino'}",
                 "--config.grpo.dino_size=28", "--config.eval.samples=2", "--config.eval.windows=5",
                 "--config.eval.batch_size=2")
  assert run.returncode == 0, run.stderr[-3000:]
  out = tmp_path / "run" / "eval"
  result = json.loads((out / "metrics.json").read_text())
  rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  assert result["windows"] == 5 and len(rows) == 10
  assert len({r["user"] for r in rows}) == 5  # eval.per_user = 1
  # Only users held out of training (the demo's data.holdout_users = 12: the first by sha256 of the id
  # among users with a positive rating).
  ratings = [line.split("::") for line in (tmp_path / "world" / "ratings.dat").read_text().splitlines()]
  positive = {int(u) for u, _, r, _ in ratings if float(r) >= 4.0}
  held = set(sorted(positive, key=lambda u: hashlib.sha256(str(u).encode()).hexdigest())[:12])
  assert {r["user"] for r in rows} <= held
  expected = {"clip_history", "clip_target", "clip_future", "dino_history", "dino_target", "dino_future", "ssim_target",
              "genre_hit"}
  assert set(result["metrics"]) == expected | {"cross_user_similarity"}

  load = lambda name: np.asarray(Image.open(out / name))
  gen = np.stack([load(r["file"]) for r in rows])
  target = np.stack([load(f"images/{r['window']:05d}_target.png") for r in rows])
  torch_in = lambda x, size, crop, mean, std: torch.tensor(np.asarray(
      preprocess(jnp.asarray(x), size, crop, mean, std))).permute(0, 3, 1, 2)
  with torch.no_grad():
    ci = lambda x: hc.get_image_features(pixel_values=torch_in(x, 30, 30, CLIP_MEAN, CLIP_STD)).pooler_output.numpy()
    di = lambda x: hd(pixel_values=torch_in(x, 32, 28, IMAGENET_MEAN, IMAGENET_STD)).pooler_output.numpy()
    g = ci(gen)
    ref = {"clip_target": cos100(g, ci(target)), "dino_target": cos100(di(gen), di(target)),
           "ssim_target": pytorch_msssim.ssim(torch.tensor(gen).permute(0, 3, 1, 2).float(),
                                              torch.tensor(target).permute(0, 3, 1, 2).float(), data_range=255,
                                              size_average=False).numpy()}
  for name, want in ref.items():
    np.testing.assert_allclose([r[name] for r in rows], want, atol=2e-3, err_msg=name)
    assert abs(result["metrics"][name]["mean"] - float(np.mean(want))) < 2e-3
  assert all(r["genre_hit"] in (0.0, 1.0) for r in rows)
  unit = g / np.linalg.norm(g, axis=1, keepdims=True)
  users = np.array([r["user"] for r in rows])
  other = users[:, None] != users[None, :]
  np.testing.assert_allclose(result["metrics"]["cross_user_similarity"], (unit @ unit.T)[other].mean(), atol=1e-4)
