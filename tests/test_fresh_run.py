"""A fresh clone with nothing downloaded: `python -m pgen_jax.main --config=configs/movielens.py`, pointed at
local servers that play the Hub (a tiny random Janus, open_clip-layout CLIP and DINOv2 under the real
repository names) and the MovieLens site, runs fetch -> prepare -> sft -> eval -> export."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy
import transformers as T
from PIL import Image

from fake_sites import FakeSites, zip_folder
from hf_janus import hf_model
from test_clip import hf_clip, to_open_clip
from test_dino import dinov2

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(folder: Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def hub_repos(tmp: Path) -> dict:
  hf_model().save_pretrained(tmp / "janus")
  clip = hf_clip("gelu", 2)
  sd = {k: v.numpy() for k, v in clip.state_dict().items()}
  (tmp / "clip").mkdir()
  safetensors.numpy.save_file(to_open_clip(sd, clip.config), tmp / "clip" / "open_clip_model.safetensors")
  (tmp / "clip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
      "embed_dim": 24, "quick_gelu": False,
      "vision_cfg": {"image_size": 30, "layers": 2, "width": 40, "patch_size": 6, "head_width": 10, "mlp_ratio": 1.4},
      "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 1.5}}}))
  (tmp / "clip" / "open_clip_pytorch_model.bin").write_bytes(b"the allow patterns leave this out")
  dinov2(28).save_pretrained(tmp / "dino")
  return {"deepseek-community/Janus-Pro-1B": folder_bytes(tmp / "janus"),
          "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": folder_bytes(tmp / "clip"),
          "facebook/dinov2-large": folder_bytes(tmp / "dino")}


def movielens_site(tmp: Path) -> tuple[dict, Path]:
  """A tiny ml-latest-small (24 users x 10 movies) and a folder of posters."""
  src = tmp / "ml-src"
  src.mkdir()
  (src / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{m},Movie {m} (2000),Drama\n"
                                                                     for m in range(1, 11)))
  (src / "links.csv").write_text("movieId,imdbId,tmdbId\n" + "".join(f"{m},{m:07d},{m}\n" for m in range(1, 11)))
  rng = np.random.default_rng(0)
  rows = [f"{u},{m},{rng.choice([4.0, 4.5, 5.0])},{1000 * u + k}" for u in range(1, 25)
          for k, m in enumerate(rng.permutation(np.arange(1, 11)))]
  (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
  data = zip_folder(src, "ml-latest-small")
  posters = tmp / "posters"
  posters.mkdir()
  for m in range(1, 11):
    Image.fromarray(rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)).save(posters / f"{m}.jpg")
  md5 = hashlib.md5(data).hexdigest().encode()
  return {"/datasets/movielens/ml-latest-small.zip": data,
          "/datasets/movielens/ml-latest-small.zip.md5": md5 + b"  ml-latest-small.zip\n"}, posters


def test_fresh_clone_runs_every_stage_from_downloads(tmp_path):
  clone = tmp_path / "clone"
  shutil.copytree(ROOT / "configs", clone / "configs")  # nothing else: no checkpoints/, no data/
  files, posters = movielens_site(tmp_path)
  sites = FakeSites(repos=hub_repos(tmp_path / "hub"), files=files,
                    break_once={"/datasets/movielens/ml-latest-small.zip"})
  try:
    run = subprocess.run(
        [sys.executable, "-m", "pgen_jax.main", "--config=configs/movielens.py",
         "--config.stages=('fetch','prepare','sft','eval','export')",
         f"--config.fetch.movielens_url={sites.url}/datasets/movielens", f"--config.fetch.posters={posters}",
         "--config.model.dtype=float32", "--config.model.tokenizer=bytes", "--config.data.image_size=16",
         "--config.data.history_len=2", "--config.data.future_len=1", "--config.data.workers=0",
         "--config.prompt.template={history}", "--config.prompt.max_text_tokens=8",
         "--config.sft.batch_size=2", "--config.sft.grad_accum=1", "--config.sft.num_steps=2",
             "--config.sft.warmup_steps=1",
         "--config.sft.eval_every=2", "--config.sft.eval_batches=1", "--config.sft.eval_batch_size=2",
         "--config.sft.ckpt_every=2", "--config.sft.grid_samples=1", "--config.reward_models.dino_size=28",
         "--config.eval.samples=1", "--config.eval.windows=2", "--config.eval.batch_size=2"],
        cwd=clone, capture_output=True, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "HF_ENDPOINT": sites.url, "HF_HUB_OFFLINE": "0",
             "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""})
  finally:
    sites.close()
  assert run.returncode == 0, run.stderr[-4000:]
  # Downloads in the places configs/movielens.py names, whole, and nothing the allow patterns exclude.
  ckpt = clone / "checkpoints"
  assert sorted(p.name for p in ckpt.iterdir() if not p.name.endswith(".lock")) == [
      "CLIP-ViT-H-14-laion2B-s32B-b79K", "Janus-Pro-1B", "dinov2-large"]
  assert (ckpt / "Janus-Pro-1B" / "model.safetensors").read_bytes() == \
      (tmp_path / "hub" / "janus" / "model.safetensors").read_bytes()
  assert not (ckpt / "CLIP-ViT-H-14-laion2B-s32B-b79K" / "open_clip_pytorch_model.bin").exists()
  assert (clone / "data" / "movielens" / "ratings.csv").read_bytes() == (tmp_path / "ml-src" / "ratings.csv").read_bytes()
  assert [r for r in sites.requests if r[1].endswith(".zip")][1][2]  # the broken archive resumed
  # Each repository was asked for at the commit the config pins (40 hex digits), not at "main".
  sys.path.insert(0, str(ROOT))
  from configs.common import base_config
  fetch = base_config().fetch
  for spec in (fetch.janus, fetch.clip, fetch.dino, fetch.qwen, fetch.nima):
    assert len(spec.revision) == 40 and int(spec.revision, 16) >= 0, spec
  asked = {r[1] for r in sites.requests}
  for spec in (fetch.janus, fetch.clip, fetch.dino):  # the hub API: .../revision/<rev> or .../tree/<rev>
    api = [a for a in asked if a.startswith(f"/api/models/{spec.repo}/")]
    assert api and all(a.split("/")[6] == spec.revision for a in api), (spec.repo, api)
  # Every stage ran: SFT checkpoints, eval metrics measured with the fetched CLIP and DINO, an HF export.
  work = clone / "runs" / "movielens"
  assert (work / "sft" / "final").exists()
  results = json.loads((work / "eval" / "results.json").read_text())  # the comparison (issue 14's eval)
  assert results["windows"] == 2 and {"cis_target", "dis_target"} <= set(results["methods"]["sft"]["metrics"])
  exported = T.JanusForConditionalGeneration.from_pretrained(work / "hf")
  assert exported.config.vision_config.image_size == 16
