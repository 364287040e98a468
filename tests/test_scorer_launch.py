"""The job's own scorer: started as a child on 127.0.0.1 with a fresh token when nothing answers,
health-checked, restarted when it dies, stopped at the end; an answering scorer is used as it is."""

import os
import signal
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from fake_sites import closed_port_url
from pgen_jax.errors import ScorerUnavailable
from pgen_jax.scorer import launch
from pgen_jax.scorer.nima import NIMA, load_nima, score


@pytest.fixture(scope="module")
def nima_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("nima") / "nima.pth"
  torch.manual_seed(0)
  torch.save({"params": NIMA().eval().state_dict()}, path)
  return path


def grpo_config(url, nima="", start=True):
  return types.SimpleNamespace(scorer_url=url, scorer_token="", scorer_nima=str(nima), scorer_qwen="",
                               scorer_start=start, scorer_device="cpu")


def test_started_restarted_and_stopped(tmp_path, nima_file):
  url = closed_port_url()
  client = launch.scorer_client(grpo_config(url, nima_file), tmp_path)
  proc = client.process
  try:
    assert client.health()["terms"] == ["nima"]
    with pytest.raises(urllib.error.HTTPError) as e:  # the fresh token guards it
      urllib.request.urlopen(url + "/health", timeout=5)
    assert e.value.code == 401
    images = np.random.default_rng(0).integers(0, 256, (1, 40, 50, 3), dtype=np.uint8)
    want = score(load_nima(nima_file), list(images))
    np.testing.assert_allclose(client.score(images, ["nima"])["nima"], want, rtol=1e-5)
    # An answering scorer is used as it is, not started again; a wrong token is said at once.
    with pytest.raises(ScorerUnavailable, match="refused the request \\(401\\)"):
      launch.scorer_client(grpo_config(url, nima_file), tmp_path)
    other = launch.scorer_client(types.SimpleNamespace(**{**vars(grpo_config(url)), "scorer_token": proc.token}),
                                 tmp_path)
    assert not isinstance(other, launch.ManagedClient) and other.health()["status"] == "ok"
    first = proc.proc.pid
    os.kill(first, signal.SIGKILL)  # dies: the next request waits for the restarted child
    np.testing.assert_allclose(client.score(images, ["nima"])["nima"], want, rtol=1e-5)
    assert proc.proc.pid != first and proc.restarts == 1
  finally:
    launch.stop_all()
  assert proc.proc.poll() is not None and not launch.answers(url)
  assert "listening on http://127.0.0.1" in (tmp_path / "scorer.log").read_text()


def test_nothing_to_start_is_a_one_line_error(tmp_path):
  url = closed_port_url()
  with pytest.raises(ScorerUnavailable, match=f"nothing answers at {url}.*reward_models.scorer_nima"):
    launch.scorer_client(grpo_config(url), tmp_path)
  with pytest.raises(ScorerUnavailable, match="reward_models.scorer_nima: /no/nima.pth does not exist"):
    launch.scorer_client(grpo_config(url, "/no/nima.pth"), tmp_path)
  with pytest.raises(ScorerUnavailable, match="reward_models.scorer_start=True"):
    launch.scorer_client(grpo_config(url, start=False), tmp_path)


def test_a_child_that_cannot_start_is_reported_with_its_log(tmp_path):
  bad = tmp_path / "bad.pth"
  torch.save({"params": {"x": torch.zeros(1)}}, bad)
  with pytest.raises(ScorerUnavailable, match="exited with code 1.*not a NIMA"):
    launch.scorer_client(grpo_config(closed_port_url(), bad), tmp_path)
