"""The grpo stage end to end on the synthetic world: the reward rises, a hackable reward is caught
(stop and roll-back responses), and a killed run resumes to the same parameters."""

import http.server
import json
import re
import threading
import time
import urllib.request

import jax
import numpy as np
import pytest

from test_scorer import backends, free_port, start  # noqa: F401  (backends: tiny random Qwen2.5-VL judge, NIMA)
from test_janus_convert import flat_params
from test_sft import ROOT, final_params, kill_at_checkpoint, run_main
from pgen_jax.data import synthetic
from pgen_jax.models import load_janus, make_mesh
from pgen_jax.rewards.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The world these tests were tuned on: 48 users (the demo's has 96); prepare finds it written."""
  root = tmp_path_factory.mktemp("grpo_world")
  synthetic.write(root / "world", synthetic.WorldConfig(users=48))
  return root


# The SFT these tests start from trains the LM side only (the demo also trains its understanding encoder),
# on 16 windows a step with the items' titles in the prompt (the demo: 8, posters only): a weaker start
# leaves GRPO room to show its rise, the regime these thresholds were seen in.
SFT_TRAINABLE = ("language_model", "generation_embeddings", "generation_aligner", "generation_head")


def grpo_args(workdir, world, *stages, **over):
  opts = dict(prompts_per_step=8, group_size=8, log_every=5, ckpt_every=5, beta=0.0, logprobs="cfg", lr=2e-3,
              num_steps=40, reward="genre")
  opts.update(over)
  return ["--config=configs/demo.py", f"--config.stages={tuple(stages)!r}", f"--config.workdir={workdir}",
          f"--config.data.root={world}/world", f"--config.data.store={world}/data", "--config.sft.num_steps=60",
          "--config.sft.genre_probe=False", "--config.sft.eval_every=60", "--config.sft.ckpt_every=60",
          f"--config.sft.trainable={SFT_TRAINABLE!r}", "--config.sft.batch_size=16", "--config.prompt.item={image}{text}\n",
          *[f"--config.grpo.{k}={v}" for k, v in opts.items()]]


def summary(workdir):
  return json.loads((workdir / "grpo" / "summary.json").read_text())


def test_reward_rises(tmp_path, world):
  run = run_main(ROOT, *grpo_args(tmp_path, world, "prepare", "sft", "grpo"))
  assert run.returncode == 0, run.stderr[-3000:]
  r = summary(tmp_path)["rewards"]
  assert len(r) == 40 and "alarms" not in summary(tmp_path)  # its policy sharpens, but no false alarm
  start, end = np.mean(r[:5]), np.mean(r[-5:])
  assert end > start + 0.3, (start, end)  # seen here: 0.18 -> 0.77
  # The comparison gains a GRPO row beside SFT's, on the same windows of held-out users.
  run = run_main(ROOT, *grpo_args(tmp_path, world, "eval"), "--config.eval.recommenders=('pop',)",
                 "--config.eval.samples=2", "--config.eval.bootstrap=50")
  assert run.returncode == 0, run.stderr[-3000:]
  res = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert list(res["methods"]) == ["pop", "zero_shot", "sft", "grpo"], res["methods"].keys()
  assert res["methods"]["grpo"]["source"].endswith("grpo/final"), res["methods"]["grpo"]
  # Its own images, measured like the others (seen: genre_hit 0.25 against SFT's 0.375 on these 24 images:
  # the training reward's rise, on training users, does not show on 12 held-out users after 40 steps).
  values = {m: np.load(tmp_path / "eval" / "methods" / m / "values.npz") for m in ("sft", "grpo")}
  assert values["grpo"]["genre_hit"].shape == values["sft"]["genre_hit"].shape == (12, 2)
  assert not np.array_equal(values["grpo"]["ssim_target"], values["sft"]["ssim_target"])


# At these tests' lr (5e-3, thousands of times the recipe's), one-update-stale samples leave the clip
# range and sample-ahead slows the hacking about 3x (seen: caught at step 28 instead of 8), so these
# run on-policy; the defence itself is the same either way.
def hacked_models_args(workdir, world, tmp_path, **over):
  """The default path (reward=models, tiny random CLIP and DINOv2) with a hackable term injected: the
  share of tokens from one fixed image's codes, weighted to dominate the similarity terms."""
  from test_clip import hf_clip
  from test_dino import dinov2
  if not (tmp_path / "clip").exists():
    hf_clip("gelu", 2).save_pretrained(tmp_path / "clip")
    dinov2(28).save_pretrained(tmp_path / "dino")
  opts = dict(reward="models", lr=5e-3, logprobs="cfg", sample_ahead=False, eval_every=0, log_every=1)
  opts.update(over)
  return [*grpo_args(workdir, world, "prepare", "grpo", **opts), f"--config.reward_models.clip={tmp_path / 'clip'}",
          f"--config.reward_models.dino={tmp_path / 'dino'}", "--config.reward_models.dino_size=28",
          "--config.grpo.reward_weights.fixed=1000.0"]


# seen: the token share 0.06 -> 0.99 by step 9 (3e-3) or 6 (5e-3) while CLIP similarity across users stays
# near its 0.92 start for a few more steps; the batch's token entropy 4.15 -> below half of it by step 7 (3e-3)
# or 5 (5e-3): caught at 9 and 7 (before the token-entropy signal: not within 30 steps, and at 12).
@pytest.mark.parametrize("lr, stopped", [(3e-3, "the last healthy checkpoint is step 5"),
                                         (5e-3, "no checkpoint from before step 4")])
def test_injected_hack_on_the_models_reward_is_caught_and_stops(tmp_path, world, lr, stopped):
  run = run_main(ROOT, *hacked_models_args(tmp_path, world, tmp_path, num_steps=30, lr=lr))
  assert run.returncode == 3, run.stderr[-3000:]
  assert "reward hacking suspected" in run.stderr and stopped in run.stderr, run.stderr[-3000:]
  alarm = summary(tmp_path)["alarms"][0]
  assert alarm["step"] <= 10 and any("token entropy" in r for r in alarm["reasons"]), alarm
  assert logged(run.stderr, "reward/fixed_mean")[alarm["step"]] > 0.9  # it was a hack that was caught
  assert not (tmp_path / "grpo" / "final").exists()


def test_roll_back_then_kill_and_resume_continues_identically(tmp_path, world):
  """A roll-back really happens (lower lr, more diversity), and a run killed after it resumes with its
  roll-back state: the same alarms, per-step rewards and end state as the uninterrupted run."""
  # The stop test's run at lr 3e-3 (seen: alarm at step 9, roll-back to 5; at 5e-3 no checkpoint is from
  # before the first flagged samples); after it the lr is cut to 1% so that the run ends without a second alarm.
  args = lambda w: hacked_models_args(w, world, tmp_path, num_steps=30, lr=3e-3, defence_response="rollback",
                                      defence_max_rollbacks=1, defence_lr_factor=0.01)
  plain = run_main(ROOT, *args(tmp_path / "plain"))
  assert plain.returncode == 0, plain.stderr[-3000:]  # one alarm, one roll-back, then a healthy end
  first = summary(tmp_path / "plain")["alarms"][0]
  # The alarm took 3 flagged steps in a row (defence_patience), the first drawn by the parameters of step
  # first["step"] - 3: the roll-back goes to a checkpoint from before those, not to the newest one.
  assert first["rolled_back_to"] < first["step"] - 3, first
  assert "rolled back to step" in plain.stderr and "roll-back 1), lr x0.01, diversity weight 0.2" in plain.stderr
  # The first checkpoint step the run reaches only after the roll-back (checkpoints every 5 steps; the
  # ones after the roll-back's target were deleted, so a resume cannot pick up a pre-roll-back one).
  after = (first["step"] // 5 + 1) * 5
  kill_at_checkpoint(args(tmp_path / "killed"), tmp_path / "killed" / "grpo" / "latest" / str(after),
                     tmp_path / "killed.log", wait=900)  # 18 steps with a roll-back: slow on a busy machine
  resumed = run_main(ROOT, *args(tmp_path / "killed"))
  assert f"resumed GRPO at step {after}" in resumed.stderr, resumed.stderr[-3000:]
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  a, b = summary(tmp_path / "plain"), summary(tmp_path / "killed")
  assert a["rewards"] == b["rewards"] and a["alarms"] == b["alarms"] and len(a["alarms"]) == 1
  pa, pb = final_params(tmp_path / "plain", "grpo"), final_params(tmp_path / "killed", "grpo")
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_kill_and_resume_continues_identically(tmp_path, world):
  args = lambda w: grpo_args(w, world, "prepare", "grpo", num_steps=16, ckpt_every=4, group_size=4)
  plain = run_main(ROOT, *args(tmp_path / "plain"))
  assert plain.returncode == 0, plain.stderr[-3000:]
  kill_at_checkpoint(args(tmp_path / "killed"), tmp_path / "killed" / "grpo" / "latest" / "8", tmp_path / "killed.log")
  resumed = run_main(ROOT, *args(tmp_path / "killed"))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed GRPO at step" in resumed.stderr
  a = final_params(tmp_path / "plain", "grpo")
  b = final_params(tmp_path / "killed", "grpo")
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert summary(tmp_path / "plain")["rewards"] == summary(tmp_path / "killed")["rewards"]
  # export writes the GRPO result, not the SFT one or the initial model
  export = run_main(ROOT, "--config=configs/demo.py", "--config.stages=('export',)",
                    f"--config.workdir={tmp_path / 'plain'}", f"--config.export.dir={tmp_path / 'hf'}")
  assert export.returncode == 0, export.stderr[-3000:]
  c = flat_params(load_janus(tmp_path / "hf", mesh=make_mesh(devices=jax.devices()[:1])))
  for k in a:
    np.testing.assert_array_equal(a[k], c[k], err_msg=k)


def torch_reference_terms(clip_dir, dino_dir, images, history, target, future, dino_size):
  """clip_history, clip_future, dino_target (compose's definitions: 100 x cosine) recomputed with
  transformers' CLIPModel and Dinov2Model in float32 and torch's antialiased bicubic resize."""
  import torch
  import torch.nn.functional as F
  import transformers as T
  clip, dino = T.CLIPModel.from_pretrained(clip_dir).eval(), T.Dinov2Model.from_pretrained(dino_dir).eval()

  def pixels(x, resize, crop, mean, std):  # shortest side to `resize`, centre crop, normalise
    t = torch.tensor(x.reshape(-1, *x.shape[-3:])).permute(0, 3, 1, 2).float() / 255
    t = F.interpolate(t, size=(resize, resize), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top = (resize - crop) // 2
    t = t[:, :, top:top + crop, top:top + crop]
    return (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

  unit = lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True)
  size = clip.config.vision_config.image_size
  with torch.no_grad():
    ce = lambda x: clip.get_image_features(pixel_values=pixels(x, size, size, CLIP_MEAN, CLIP_STD)).pooler_output.numpy()
    de = lambda x: dino(pixel_values=pixels(x, round(dino_size * 256 / 224), dino_size, IMAGENET_MEAN,
                                            IMAGENET_STD)).pooler_output.numpy()
    g, h, f = unit(ce(images)), unit(ce(history)).reshape(*history.shape[:2], -1), unit(ce(future))
    dg, dt = unit(de(images)), unit(de(target))
  f = f.reshape(*future.shape[:2], -1)
  return {"clip_history": 100 * (g * unit(h.mean(1))).sum(-1), "clip_future": 100 * np.einsum("nd,npd->np", g, f).mean(1),
          "dino_target": 100 * (dg * dt).sum(-1)}


def test_logged_reward_is_the_weighted_raw_terms(tmp_path, world):
  """The default path: reward=models with tiny random CLIP and DINOv2 checkpoints, beta 0.01,
  logprobs=cond, bf16 compute. Each step's logged reward_mean is the weighted sum of the raw terms
  recomputed with transformers on the images that step saved."""
  from test_clip import hf_clip
  from test_dino import dinov2
  hf_clip("gelu", 2).save_pretrained(tmp_path / "clip")
  dinov2(28).save_pretrained(tmp_path / "dino")
  run = run_main(ROOT, *grpo_args(tmp_path, world, "prepare", "grpo", reward="models", num_steps=3, group_size=4,
                                  prompts_per_step=4, log_every=1, ckpt_every=3, beta=0.01, logprobs="cond",
                                  save_rollouts=1, eval_every=3),
                 "--config.model.dtype=bfloat16", f"--config.reward_models.clip={tmp_path / 'clip'}",
                 f"--config.reward_models.dino={tmp_path / 'dino'}", "--config.reward_models.dino_size=28",
                 "--config.grpo.reward_weights.clip_history=1.0", "--config.grpo.reward_weights.clip_future=1.0",
                 "--config.grpo.reward_weights.dino_target=0.5")
  assert run.returncode == 0, run.stderr[-3000:]
  logged_mean = logged(run.stderr, "reward_mean")
  assert sorted(logged_mean) == [1, 2, 3]
  weights = {"clip_history": 1.0, "clip_future": 1.0, "dino_target": 0.5}
  for step in (1, 2, 3):
    saved = np.load(tmp_path / "grpo" / "rollouts" / f"step_{step:07d}.npz")
    n = len(saved["images"])
    rep = lambda x: np.repeat(x, n // len(x), axis=0)
    ref = torch_reference_terms(tmp_path / "clip", tmp_path / "dino", saved["images"], rep(saved["history"]),
                                rep(saved["target"]), rep(saved["future"]), 28)
    total = sum(w * ref[k] for k, w in weights.items())
    # bf16 reward models against float32 torch: 100 x cosine agrees to within 1 (seen: 0.57), the
    # totals (about 190) to within 1.5 (seen: 0.94) per image and 0.5 in the mean (seen: 0.08)
    for k in weights:
      np.testing.assert_allclose(saved[f"term_{k}"], ref[k], atol=1.0, err_msg=k)
    np.testing.assert_allclose(saved["total"], total, atol=1.5)
    assert logged_mean[step] == pytest.approx(total.mean(), abs=0.5), (step, logged_mean[step], total.mean())
  s = summary(tmp_path)
  # the log prints 6 significant digits (185.147): up to 3e-6 relative rounding
  assert s["rewards"] == pytest.approx([logged_mean[k] for k in (1, 2, 3)], rel=1e-5)
  assert s["initial_reward"] == pytest.approx(logged_mean[1], rel=1e-5)
  assert [v["step"] for v in s["validation"]] == [3] and s["best_step"] == 3
  assert (tmp_path / "grpo" / "best" / "3").exists()


def logged(stderr: str, key: str) -> dict[int, float]:
  """{step: value} of one scalar from the run's log lines ("[step] key=value, ...")."""
  return {int(m.group(1)): float(m.group(2))
          for m in re.finditer(rf"\[(\d+)\][^\n]*\b{re.escape(key)}=([-+0-9.e]+)", stderr)}


def test_sample_ahead_trains_with_the_sampling_logprobs(tmp_path, world):
  """logprobs=cfg in bf16. Sampled ahead, a batch is one update old when trained on, so its importance
  ratio moves off 1; sampled after the update, the ratio is exactly 1: the old log-probs are the
  update's own teacher-forced ones, not the sampler's KV-cache pass (whose bf16 rounding CFG at w = 5
  magnifies)."""
  ratios = {}
  for ahead in (True, False):
    run = run_main(ROOT, *grpo_args(tmp_path / str(ahead), world, "prepare", "grpo", num_steps=4, ckpt_every=10,
                                    log_every=1, group_size=4, logprobs="cfg", lr=2e-2, sample_ahead=ahead,
                                    eval_every=0), "--config.model.dtype=bfloat16")
    assert run.returncode == 0, run.stderr[-3000:]
    ratios[ahead] = logged(run.stderr, "ratio_mean")
    assert sorted(ratios[ahead]) == [1, 2, 3, 4]
  assert all(r == 1.0 for r in ratios[False].values()), ratios[False]
  assert ratios[True][1] == 1.0  # the first batch is sampled before any update
  assert max(abs(ratios[True][s] - 1) for s in (2, 3, 4)) > 1e-3, ratios[True]


class HoldingProxy:
  """Sits between the trainer and the real scorer on 127.0.0.1 and answers scoring request k only once
  request k + 1 has arrived (the last expected one at once). A trainer that waits for a batch's scores
  before sampling the next one therefore never gets them: after `hold` seconds it gets a 400."""

  def __init__(self, upstream: str, expected: int, hold: float = 120.0):
    self.upstream, self.expected, self.hold = upstream, expected, hold
    self.arrived = threading.Semaphore(0)
    self.count, self.answered, self.refused, self.lock = 0, 0, 0, threading.Lock()
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with proxy.lock:
          k, proxy.count = proxy.count, proxy.count + 1
        proxy.arrived.release()
        if k + 1 < proxy.expected and not proxy.wait_for(k + 1):
          with proxy.lock:
            proxy.refused += 1
          return self.reply(400, json.dumps({"error": f"request {k} held: the next batch never came"}).encode())
        req = urllib.request.Request(proxy.upstream + self.path, data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
          self.reply(200, r.read())
        with proxy.lock:
          proxy.answered += 1

      def reply(self, code, data):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

  def wait_for(self, n: int) -> bool:
    """Whether request number n (0-based) arrives within the hold."""
    deadline = time.time() + self.hold
    while time.time() < deadline:
      with self.lock:
        if self.count > n:
          return True
      self.arrived.acquire(timeout=0.1)
    return False


def test_scorer_latency_hides_behind_the_next_rollout(tmp_path, world, backends):
  """The judge runs in a real scorer process; the proxy only answers batch t's request after batch
  t + 1's has been sent, which happens only if batch t + 1 is sampled while batch t is scored."""
  proc, url = start(backends[0], free_port())
  proxy = HoldingProxy(url, expected=4)
  try:
    run = run_main(ROOT, *grpo_args(tmp_path, world, "prepare", "grpo", reward="models", num_steps=4, group_size=2,
                                    log_every=1, ckpt_every=10, eval_every=0),
                   f"--config.reward_models.scorer_url={proxy.url}", "--config.grpo.reward_weights.clip_history=0.0",
                   "--config.grpo.reward_weights.clip_future=0.0", "--config.grpo.reward_weights.dino_target=0.0",
                   "--config.grpo.reward_weights.profile=1.0")
  finally:
    proxy.server.shutdown()
    proc.kill()
    proc.wait()
  assert run.returncode == 0, run.stderr[-3000:]
  assert (proxy.count, proxy.answered, proxy.refused) == (4, 4, 0)
  profile = logged(run.stderr, "reward/profile_mean")
  assert sorted(profile) == [1, 2, 3, 4] and all(0.0 <= v <= 1.0 for v in profile.values()), profile
  assert (tmp_path / "grpo" / "grids" / "step_0000004.png").exists()


def test_benchmark_config_runs_at_small_shapes(tmp_path):
  """configs/bench_grpo_1b.py, shrunk to CPU size: random CLIP/DINO presets load and the split is logged."""
  run = run_main(ROOT, "--config=configs/bench_grpo_1b.py", f"--config.workdir={tmp_path}",
                 f"--config.data.root={tmp_path}/world", "--config.model.preset=demo", "--config.data.image_size=32",
                 "--config.data.history_len=2", "--config.reward_models.clip=random:tiny", "--config.reward_models.dino=random:tiny",
                 "--config.reward_models.dino_size=28", "--config.grpo.num_steps=2", "--config.grpo.prompts_per_step=2",
                 "--config.grpo.group_size=2", "--config.data.workers=0")
  assert run.returncode == 0, run.stderr[-3000:]
  for key in ("time/rollout", "time/reward", "time/scorer_wait", "time/update", "reward/clip_history_mean",
              "reward/dino_target_mean"):
    assert sorted(logged(run.stderr, key)) == [1, 2], key
