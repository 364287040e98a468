"""The scorer: a real process on 127.0.0.1 serving NIMA (its real Inception-ResNet-v2 architecture,
random weights) and a tiny random Qwen2.5-VL, checked against the same models run directly in torch;
bad requests; the client across a restart and a scorer that stays down."""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from pgen_jax.errors import ScorerUnavailable
from pgen_jax.scorer.client import ScorerClient, profile_text
from pgen_jax.scorer.judge import TEMPLATE
from pgen_jax.scorer.nima import NIMA, load_nima
from pgen_jax.scorer.protocol import encode_images

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
            "<|endoftext|>"]


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
  root = tmp_path_factory.mktemp("scorer")
  torch.manual_seed(0)
  nima = NIMA().eval()
  with torch.no_grad():  # non-trivial BatchNorm statistics, so the test has power
    for m in nima.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  torch.save({"params": nima.state_dict()}, root / "nima.pth")
  words = list("0123456789") + ["A", "user's", "profile:", "How", "well", "does", "this", "image", "match", "the",
                                "taste?", "<unk>"]
  tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok = T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
  tok.add_special_tokens({"additional_special_tokens": SPECIALS})
  ids = tok.convert_tokens_to_ids
  cfg = T.Qwen2_5_VLConfig(
      text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=0,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
      vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0]),
      image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
      vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
  qwen = T.Qwen2_5_VLForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for p in qwen.parameters():
      p.add_(0.2 * torch.randn(p.shape))
  qwen.save_pretrained(root / "qwen")
  tok.save_pretrained(root / "qwen")
  T.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56 * 4).save_pretrained(root / "qwen")
  return root, nima, qwen, tok


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(root, port, *extra):
  proc = subprocess.Popen([sys.executable, "-m", "pgen_jax.scorer", "serve", f"--nima={root / 'nima.pth'}",
                           f"--qwen={root / 'qwen'}", f"--port={port}", "--judge_image_size=56", "--batch=2", *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  line = proc.stdout.readline()
  assert line.startswith("listening on http://127.0.0.1:"), line
  return proc, line.split()[-1]


@pytest.fixture(scope="module")
def server(backends):
  proc, url = start(backends[0], free_port(), "--token=secret", "--max_request_mb=0.5")
  yield url
  proc.kill()
  proc.wait()


def reference_profile(qwen, tok, image, profile):
  """The judge's definition, one image at a time, straight in torch."""
  from PIL import Image
  ip = T.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56 * 4)
  enc = ip(images=[Image.fromarray(image).resize((56, 56), Image.BICUBIC)], return_tensors="pt")
  n = int(enc["image_grid_thw"][0].prod()) // 4
  text = TEMPLATE.format(image="<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>", profile=profile)
  with torch.no_grad():
    logits = qwen(**tok([text], return_tensors="pt"), **enc).logits[0, -1, [tok.convert_tokens_to_ids(str(d))
                                                                            for d in range(10)]]
  p = torch.softmax(logits, -1)
  return float((p * torch.arange(10)).sum() / 9)


def test_scores_equal_the_models_run_directly(backends, server):
  _, nima, qwen, tok = backends
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 64, 48, 3)).astype(np.uint8)
  profiles = ["A user's profile: taste?", "image match", "How well does this image match the taste? " * 3]
  client = ScorerClient(server, token="secret", timeout=60, retries=1, backoff=0.1)
  assert client.health()["terms"] == ["nima", "profile"]
  got = client.score(images, ["nima", "profile"], profiles)
  with torch.no_grad():
    ref_nima = nima(torch.from_numpy(images)).numpy()
  np.testing.assert_allclose(got["nima"], ref_nima, rtol=1e-5)
  assert 1 <= got["nima"].min() and got["nima"].max() <= 10
  np.testing.assert_allclose(got["profile"], [reference_profile(qwen, tok, x, p) for x, p in zip(images, profiles)],
                             atol=1e-5)
  future = client.submit(images[:1], ["nima"])
  np.testing.assert_allclose(future.result()["nima"], ref_nima[:1], rtol=1e-5)


def post(url, body: bytes, token="secret", path="/score"):
  req = urllib.request.Request(url + path, data=body, headers={"Authorization": f"Bearer {token}"})
  try:
    with urllib.request.urlopen(req, timeout=30) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read() or b"{}")


def test_bad_requests_get_4xx_and_the_server_stays_up(server):
  img = encode_images([np.zeros((8, 8, 3), np.uint8)])
  cases = [
      (b"{not json", "secret", 400, "not JSON"),
      (json.dumps({"terms": ["nima"], "images": [{"shape": [8, 8], "data": ""}]}).encode(), "secret", 400, "shape"),
      (json.dumps({"terms": ["nima"], "images": [{"shape": [8, 8, 3], "data": "AAAA"}]}).encode(), "secret", 400,
       "bytes for shape"),
      (json.dumps({"terms": ["beauty"], "images": img}).encode(), "secret", 400, "not served"),
      (json.dumps({"terms": ["profile"], "images": img}).encode(), "secret", 400, "profiles"),
      (json.dumps({"terms": ["nima"], "images": img}).encode(), "wrong", 401, "token"),
      (b"x" * (600 * 1024), "secret", 413, "exceeds"),
  ]
  for body, token, code, text in cases:
    status, reply = post(server, body, token)
    assert status == code and text in reply["error"], (status, reply)
  status, reply = post(server, json.dumps({"terms": ["nima"], "images": img}).encode())
  assert status == 200 and len(reply["nima"]) == 1


def test_client_survives_a_restart_and_fails_clearly_when_down(backends):
  port = free_port()
  proc, url = start(backends[0], port)
  client = ScorerClient(url, timeout=60, retries=6, backoff=0.25)
  images = np.zeros((1, 16, 16, 3), np.uint8)
  first = client.score(images, ["nima"])["nima"]
  proc.kill()
  proc.wait()
  box = {}
  threading.Thread(target=lambda: box.setdefault("proc", start(backends[0], port)[0]), daemon=True).start()
  try:
    again = client.score(images, ["nima"])["nima"]  # retried until the new process answers
    np.testing.assert_allclose(again, first, rtol=1e-6)
  finally:
    for _ in range(200):
      if "proc" in box:
        break
      time.sleep(0.1)
    box["proc"].kill()
    box["proc"].wait()
  down = ScorerClient(url, timeout=2, retries=2, backoff=0.05)
  with pytest.raises(ScorerUnavailable, match="after 3 tries"):
    down.score(images, ["nima"])


def test_profile_text():
  assert profile_text(["Heat (1995) | Action, Crime", " ", "Up (2009) | Animation"]) == \
      "Liked, oldest first: Heat (1995) | Action, Crime; Up (2009) | Animation."
  assert profile_text(["a", "b", "c"], max_items=2) == "Liked, oldest first: b; c."
  assert profile_text([]) == "No history."


def test_nima_has_pyiqa_layout_and_preprocessing(tmp_path):
  """Parameter names and shapes as pyiqa's NIMA (timm's inception_resnet_v2 trunk as `base_model`, head
  Flatten/Dropout/Linear/Softmax) stores them, and pyiqa's eval preprocessing (torchvision resize of the
  shorter side, centre crop) for a non-square image."""
  state = NIMA().state_dict()
  expected = {"base_model.conv2d_1a.conv.weight": (32, 3, 3, 3), "base_model.conv2d_1a.bn.running_var": (32,),
              "base_model.mixed_5b.branch3.1.conv.weight": (64, 192, 1, 1), "base_model.repeat.9.conv2d.bias": (320,),
              "base_model.repeat_1.19.branch1.2.conv.weight": (192, 160, 7, 1),
              "base_model.mixed_7a.branch2.2.conv.weight": (320, 288, 3, 3),
              "base_model.repeat_2.8.branch1.1.conv.weight": (224, 192, 1, 3),
              "base_model.block8.conv2d.weight": (2080, 448, 1, 1), "base_model.conv2d_7b.conv.weight": (1536, 2080, 1, 1),
              "classifier.2.weight": (10, 1536), "classifier.2.bias": (10,)}
  for k, shape in expected.items():
    assert tuple(state[k].shape) == shape, k
  assert sorted(k for k in state if k.startswith("classifier")) == ["classifier.2.bias", "classifier.2.weight"]
  old = {k.replace("classifier.2", "classifier.1"): v for k, v in state.items()}
  torch.save({"params": old}, tmp_path / "old.pth")
  with pytest.raises(ValueError, match="classifier"):
    load_nima(tmp_path / "old.pth")

  torch.manual_seed(0)
  model = NIMA().eval()
  image = torch.randint(0, 256, (1, 320, 400, 3), dtype=torch.uint8)
  x = image.permute(0, 3, 1, 2).float() / 255
  x = torch.nn.functional.interpolate(x, size=(299, 373), mode="bilinear", antialias=True)  # 373 = int(299 * 400 / 320)
  x = (x[..., :, 37:37 + 299] - 0.5) / 0.5  # left = round((373 - 299) / 2)
  with torch.no_grad():
    dist = model.classifier(torch.nn.functional.adaptive_avg_pool2d(model.base_model(x), 1))
    np.testing.assert_allclose(model(image).numpy(), (dist * torch.arange(1, 11)).sum(-1).numpy(), rtol=1e-6)


# Inception-ResNet-v2 as published (Szegedy et al. 2016, arXiv 1602.07261, figs. 3 and 16-19; TF-slim's
# variant that timm and pyiqa use), written here as a plain function over a state dict: each block's branches
# as lists of (stride, padding) per conv, read in order from the checkpoint's keys. "same": (k - 1) / 2 per side.
SAME, VALID = "same", "valid"
BLOCKS = {  # block -> its branches, each a list of (stride, padding) per conv; "max"/"avg": a pooling branch
    "mixed_5b": [[(1, SAME)], [(1, SAME), (1, SAME)], [(1, SAME)] * 3, ["avg", (1, SAME)]],
    "block35": [[(1, SAME)], [(1, SAME)] * 2, [(1, SAME)] * 3],
    "mixed_6a": [[(2, VALID)], [(1, SAME), (1, SAME), (2, VALID)], ["max"]],
    "block17": [[(1, SAME)], [(1, SAME)] * 3],
    "mixed_7a": [[(1, SAME), (2, VALID)], [(1, SAME), (2, VALID)], [(1, SAME), (1, SAME), (2, VALID)], ["max"]],
    "block8": [[(1, SAME)], [(1, SAME)] * 3],
}


def reference_nima(sd, images_uint8):
  F = torch.nn.functional

  def conv(name, x, stride, padding):  # conv (no bias), batch norm (eval, eps 1e-3), ReLU
    w = sd[f"{name}.conv.weight"]
    pad = ((w.shape[2] - 1) // 2, (w.shape[3] - 1) // 2) if padding == SAME else 0
    x = F.conv2d(x, w, stride=stride, padding=pad)
    x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"], sd[f"{name}.bn.weight"],
                     sd[f"{name}.bn.bias"], training=False, eps=1e-3)
    return F.relu(x)

  def block(name, kind, x):
    outs = []
    for b, spec in enumerate(BLOCKS[kind]):
      y, single = x, len(spec) == 1 and spec[0] not in ("max", "avg")
      for i, step in enumerate(spec):
        if step == "max":
          y = F.max_pool2d(y, 3, stride=2)
        elif step == "avg":
          y = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
        else:
          y = conv(f"{name}.branch{b}" if single else f"{name}.branch{b}.{i}", y, *step)
      outs.append(y)
    return torch.cat(outs, 1)

  def residual(name, kind, x, scale, relu=True):  # x + scale * (1x1 conv, with bias, of the branches)
    up = F.conv2d(block(name, kind, x), sd[f"{name}.conv2d.weight"], sd[f"{name}.conv2d.bias"])
    return F.relu(x + scale * up) if relu else x + scale * up

  x = (images_uint8.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5  # 299 x 299 already: no resize
  p = "base_model"
  x = conv(f"{p}.conv2d_1a", x, 2, VALID)
  x = conv(f"{p}.conv2d_2a", x, 1, VALID)
  x = F.max_pool2d(conv(f"{p}.conv2d_2b", x, 1, SAME), 3, stride=2)
  x = conv(f"{p}.conv2d_3b", x, 1, VALID)
  x = F.max_pool2d(conv(f"{p}.conv2d_4a", x, 1, VALID), 3, stride=2)
  x = block(f"{p}.mixed_5b", "mixed_5b", x)
  for i in range(10):
    x = residual(f"{p}.repeat.{i}", "block35", x, 0.17)
  x = block(f"{p}.mixed_6a", "mixed_6a", x)
  for i in range(20):
    x = residual(f"{p}.repeat_1.{i}", "block17", x, 0.10)
  x = block(f"{p}.mixed_7a", "mixed_7a", x)
  for i in range(9):
    x = residual(f"{p}.repeat_2.{i}", "block8", x, 0.20)
  x = residual(f"{p}.block8", "block8", x, 1.0, relu=False)
  x = conv(f"{p}.conv2d_7b", x, 1, VALID).mean((2, 3))
  dist = torch.softmax(x @ sd["classifier.2.weight"].T + sd["classifier.2.bias"], -1)
  return (dist * torch.arange(1, 11)).sum(-1)


def test_nima_equals_the_published_layer_stack(tmp_path):
  """pyiqa-layout weights (random, batch-norm statistics too) through load_nima and through the reference above."""
  torch.manual_seed(3)
  sd = NIMA().state_dict()
  for k, v in sd.items():
    if k.endswith("running_var"):
      sd[k] = torch.rand_like(v) + 0.5
    elif k.endswith(("running_mean", "bn.bias")):
      sd[k] = 0.1 * torch.randn_like(v)
  sd["classifier.2.weight"] = sd["classifier.2.weight"] * 20  # a peaked distribution: the score moves off 5.5
  torch.save({"params": sd}, tmp_path / "nima.pth")
  noise = torch.randint(0, 256, (299, 299, 3), dtype=torch.uint8)
  ramp = torch.linspace(0, 255, 299).to(torch.uint8)[None, :, None].expand(299, 299, 3)
  images = torch.stack([noise, ramp])
  with torch.no_grad():
    got = load_nima(tmp_path / "nima.pth")(images).numpy()
    want = reference_nima(sd, images).numpy()
  assert np.abs(want - 5.5).max() > 0.05 and abs(want[0] - want[1]) > 1e-3, want  # the images matter (seen 0.005)
  np.testing.assert_allclose(got, want, rtol=1e-5)
