"""The fetch stage's downloads against local servers that play the Hub and the MovieLens site: a
connection broken mid-file resumes, a wrong checksum leaves nothing, a 404 and no network at all are
one-line errors naming what and where."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_sites import FakeSites, closed_port_url, zip_folder
from pgen_jax.errors import FetchError
from pgen_jax.fetch import archive, hub

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT.parent / "shared" / "data" / "ml-latest-small"


@pytest.fixture(autouse=True)
def online(monkeypatch):
  """conftest sets HF_HUB_OFFLINE for the suite; these tests do download (from 127.0.0.1)."""
  import huggingface_hub.constants
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@pytest.fixture
def weights():
  # 22 MB: broken at 11 MB, after huggingface_hub (10 MB chunks) has written its first chunk
  return np.random.default_rng(0).integers(0, 256, 22 << 20, dtype=np.uint8).tobytes()


def test_hub_download_resumes_a_broken_file_and_keeps_to_the_allow_patterns(tmp_path, weights):
  files = {"config.json": b'{"a": 1}', "model.safetensors": weights, "sub/tokenizer.json": b"{}",
           "pytorch_model.bin": b"not wanted"}
  sites = FakeSites(repos={"org/model": files}, break_once={"/org/model/resolve/%s/model.safetensors" % "main",
                                                           "/org/model/resolve/0123456789abcdef0123456789abcdef01234567/model.safetensors"})
  try:
    dest = hub.download_repo("org/model", "main", tmp_path / "ckpt", allow=["*.json", "*.safetensors"],
                             hf_endpoint=sites.url)
  finally:
    sites.close()
  got = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
  assert got == {"config.json", "model.safetensors", "sub/tokenizer.json", hub.MARKER}
  assert hashlib.sha256((dest / "model.safetensors").read_bytes()).digest() == hashlib.sha256(weights).digest()
  gets = [r for r in sites.requests if r[0] == "GET" and r[1].endswith("model.safetensors")]
  assert len(gets) == 2 and gets[0][2] is None
  resumed_at = int(gets[1][2].split("=")[1].rstrip("-"))
  assert 0 < resumed_at < len(weights)  # the second request asked only for the rest
  assert hub.describe(dest)["revision"] == "main"
  assert not list(tmp_path.glob("*.partial"))
  # A second call is a no-op: no request at all.
  n = len(sites.requests)
  hub.download_repo("org/model", "main", dest, hf_endpoint="http://127.0.0.1:9")
  assert len(sites.requests) == n


def test_one_file_of_a_repository(tmp_path, weights):
  sites = FakeSites(repos={"org/weights": {"nima.pth": weights[:1000], "other.pth": b"x"}})
  try:
    path = hub.download_file("org/weights", "main", "nima.pth", tmp_path / "ckpt" / "nima.pth", hf_endpoint=sites.url)
  finally:
    sites.close()
  assert path.read_bytes() == weights[:1000]
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.endswith(".lock")) == ["nima.pth"]


def test_hub_404_names_the_repository(tmp_path):
  sites = FakeSites(repos={})
  try:
    with pytest.raises(FetchError) as e:
      hub.download_repo("org/nothing", "main", tmp_path / "x", hf_endpoint=sites.url)
  finally:
    sites.close()
  assert f"{sites.url}/org/nothing" in str(e.value) and "not found (404)" in str(e.value)
  assert not (tmp_path / "x").exists()


def test_hub_lock_keeps_a_second_process_out(tmp_path):
  import filelock
  with filelock.FileLock(str(tmp_path / "ckpt") + ".lock"):
    probe = subprocess.run([sys.executable, "-c", "from pgen_jax.fetch import hub; hub.download_repo("
                            f"'o/m', 'main', {str(tmp_path / 'ckpt')!r}, lock_timeout=0.2)"],
                           capture_output=True, text=True, cwd=ROOT)
  assert probe.returncode != 0 and "another process holds" in probe.stderr


@pytest.fixture
def movielens_zip(tmp_path):
  return zip_folder(SMALL, "ml-latest-small")


def test_movielens_archive_resumes_and_unpacks(tmp_path, movielens_zip):
  md5 = hashlib.md5(movielens_zip).hexdigest()
  sites = FakeSites(files={"/ml/ml-latest-small.zip": movielens_zip,
                           "/ml/ml-latest-small.zip.md5": f"MD5 (ml-latest-small.zip) = {md5}\n".encode()},
                    break_once={"/ml/ml-latest-small.zip"})
  try:
    root = archive.fetch_movielens("ml-latest-small", tmp_path / "data" / "movielens", base_url=sites.url + "/ml")
  finally:
    sites.close()
  for name in ("ratings.csv", "movies.csv", "links.csv", "README.txt"):
    assert (root / name).read_bytes() == (SMALL / name).read_bytes()
  ranges = [r[2] for r in sites.requests if r[1] == "/ml/ml-latest-small.zip"]
  assert ranges[0] is None and 0 < int(ranges[1].split("=")[1].rstrip("-")) < len(movielens_zip)
  # No .part, no temporary folder (the lock file stays).
  assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["movielens", "movielens.lock"]
  assert oct(root.stat().st_mode & 0o777) == oct(0o777 & ~umask())


def umask():
  m = os.umask(0)
  os.umask(m)
  return m


def test_wrong_checksum_leaves_nothing(tmp_path, movielens_zip):
  sites = FakeSites(files={"/ml/ml-1m.zip": movielens_zip, "/ml/ml-1m.zip.md5": b"0" * 32 + b"  ml-1m.zip\n"})
  try:
    with pytest.raises(FetchError, match="MD5 .* differs from the published 0000"):
      archive.fetch_movielens("ml-1m", tmp_path / "movielens", base_url=sites.url + "/ml")
  finally:
    sites.close()
  assert [p.name for p in tmp_path.iterdir()] == ["movielens.lock"]


def test_archive_404_names_the_url(tmp_path):
  sites = FakeSites(files={})
  try:
    with pytest.raises(FetchError, match=r"/ml/ml-25m.zip.md5: not found \(404\)"):
      archive.fetch_movielens("ml-25m", tmp_path / "movielens", base_url=sites.url + "/ml")
  finally:
    sites.close()
  assert [p.name for p in tmp_path.iterdir()] == ["movielens.lock"]


def test_no_network_fails_within_seconds_with_one_line(tmp_path):
  dead = closed_port_url()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_ENDPOINT": dead}
  # --library_logs: huggingface_hub's warnings reach stderr, a retry among them
  run = subprocess.run([sys.executable, "-m", "pgen_jax.fetch", "--config=configs/movielens.py", "--library_logs",
                        f"--config.workdir={tmp_path}", f"--config.model.checkpoint={tmp_path}/ckpt/Janus",
                        f"--config.data.root={tmp_path}/ml"], cwd=ROOT, capture_output=True, text=True, env=env)
  assert run.returncode == 5, run.stderr[-2000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("download failed: ") and dead in last and "cannot connect" in last
  assert "Traceback" not in run.stderr
  # nothing answers: no retrying (huggingface_hub's own would wait 1 + 2 + 4 + 8 + 8 s), no request at all
  assert "Retrying" not in run.stderr and "thrown while requesting" not in run.stderr, run.stderr[-2000:]
  assert not (tmp_path / "ckpt" / "Janus").exists()


def test_ml1m_posters_come_from_tmdb_through_ml_latest_links(tmp_path, monkeypatch):
  from configs.movielens import get_config
  from pgen_jax.fetch.stage import fetch_from_config, plan
  from test_tmdb import FakeTMDB
  small = tmp_path / "small-src"
  small.mkdir()
  (small / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0000001,1\n2,0000002,2\n3,0000003,4\n")
  files = {"/ml/ml-latest-small.zip": zip_folder(small, "ml-latest-small")}
  files["/ml/ml-latest-small.zip.md5"] = hashlib.md5(files["/ml/ml-latest-small.zip"]).hexdigest().encode()
  root = tmp_path / "data" / "ml-1m"  # ml-1m as unpacked: no links.csv
  root.mkdir(parents=True)
  (root / "movies.dat").write_text("1::A (2000)::Drama\n2::B (2000)::Drama\n3::C (2000)::Drama\n")
  (root / "ratings.dat").write_text("1::1::5::1\n")
  sites, tmdb_site = FakeSites(files=files), FakeTMDB()
  cfg = get_config()
  cfg.stages = ("fetch", "prepare")
  cfg.data.root, cfg.data.version = str(root), "ml-1m"
  cfg.fetch.movielens_url, cfg.fetch.tmdb_api, cfg.fetch.tmdb_images = sites.url + "/ml", tmdb_site.api, tmdb_site.images
  monkeypatch.setenv("TMDB_API_KEY", "good-key")
  try:
    assert [what for what, _, _ in plan(cfg)] == ["posters"]  # prepare alone: no model is fetched
    fetch_from_config(cfg)
  finally:
    sites.close()
    tmdb_site.close()
  assert sorted(p.name for p in (root / "posters").glob("*.jpg")) == ["1.jpg", "2.jpg"]  # tmdb 4 has no poster
  assert (tmp_path / "data" / "ml-latest-small" / "links.csv").exists()
