"""The prepared store (TFDS -> ArrayRecord) and grain loading: content, idempotence, resume, sharding."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgen_jax.data import images, movielens, synthetic
from pgen_jax.data.histories import WindowConfig
from pgen_jax.data.loader import HistorySource, make_loader
from pgen_jax.data.plan import DataSpec
from pgen_jax.data.store import prepare

# One worker runs this module: its module fixture (minutes) is then made once, not once per worker.
pytestmark = pytest.mark.xdist_group("data_store")

WINDOWS = WindowConfig(history_len=3, future_len=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("w") / "world"
  spec = DataSpec(name="synthetic", root=str(root), image_size=16, windows=WINDOWS)
  store = root.parent / "store"
  stats = prepare(spec, store)
  return spec, store, stats


def batches(loader, n):
  it = iter(loader)
  # With workers, batch arrays live in shared memory recycled by later batches: copy to keep.
  return it, [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k


def test_synthetic_world_is_deterministic_and_genre_driven(tmp_path):
  a, b = synthetic.write(tmp_path / "a"), synthetic.write(tmp_path / "b")
  for name in ("movies.dat", "ratings.dat", "posters/5.png"):
    assert (a / name).read_bytes() == (b / name).read_bytes()
  catalog, inter, _ = movielens.read(a)
  pos = inter.rating >= 4
  cfg = synthetic.WorldConfig()
  liked = [synthetic.genre_of_movie(int(m), cfg) == synthetic.preferred_genre(int(u))
           for u, m in zip(inter.user[pos], inter.item[pos])]
  assert np.mean(liked) > 0.95
  # Two genres' posters differ far more than two posters of one genre.
  p = {m: np.asarray(Image.open(a / "posters" / f"{m}.png"), np.float32).mean((0, 1)) for m in (1, 2, 30)}
  assert np.abs(p[1] - p[30]).sum() > 5 * np.abs(p[1] - p[2]).sum()


def test_stats_and_content(world):
  spec, store, stats = world
  assert stats["splits"]["test"]["users"] == synthetic.WorldConfig().users
  assert stats["dropped"]["not_positive"] > 0
  assert json.loads((store / f"stats-{stats['fingerprint']}.json").read_text())["splits"] == stats["splits"]
  src = HistorySource(spec, str(store), "test")
  ex = src[0]
  assert ex["history"].shape == (3, 16, 16, 3) and ex["future"].shape == (2, 16, 16, 3)
  target = int(ex["item_ids"][3])
  poster = images.load_rgb(Path(spec.root) / "posters" / f"{target}.png")
  np.testing.assert_array_equal(ex["target"], images.generation_target(poster, 16))
  hist0 = images.load_rgb(Path(spec.root) / "posters" / f"{int(ex['item_ids'][0])}.png")
  np.testing.assert_array_equal(ex["history"][0], images.understanding_input(hist0, 16))
  catalog, _, _ = movielens.read(spec.root)
  assert ex["target_text"] == catalog.text(target)
  lean = HistorySource(spec, str(store), "test", with_future=False, cache_mb=0)[0]
  assert "future" not in lean and lean["item_ids"].tolist() == ex["item_ids"][:4].tolist()
  np.testing.assert_array_equal(lean["target"], ex["target"])
  assert list(ex["history_text"]) == [catalog.text(int(i)) for i in ex["item_ids"][:3]]


def test_rerun_is_a_noop_and_changes_make_a_new_store(world, monkeypatch):
  spec, store, stats = world
  import pgen_jax.data.store as store_mod
  monkeypatch.setattr(store_mod, "make_plan", lambda s: (_ for _ in ()).throw(AssertionError("rebuilt")))
  assert prepare(spec, store)["fingerprint"] == stats["fingerprint"]
  other = dataclasses.replace(spec, windows=dataclasses.replace(WINDOWS, stride=2))
  assert other.fingerprint() != spec.fingerprint()


def test_crash_midway_leaves_no_store(tmp_path, monkeypatch):
  spec = DataSpec(name="synthetic", root=str(tmp_path / "world"), image_size=16, windows=WINDOWS)
  calls = [0]
  real = images.generation_target

  def flaky(img, size):
    calls[0] += 1
    if calls[0] == 20:
      raise RuntimeError("disk full")
    return real(img, size)

  monkeypatch.setattr(images, "generation_target", flaky)
  with pytest.raises(RuntimeError, match="disk full"):
    prepare(spec, tmp_path / "store")
  assert not list((tmp_path / "store").glob("stats-*.json"))
  assert not list((tmp_path / "store").glob("pgen_histories/items-*/1.0.0/*.array_record*"))
  monkeypatch.setattr(images, "generation_target", real)
  assert prepare(spec, tmp_path / "store")["splits"]["train"]["windows"] > 0


def test_bad_posters_are_counted_and_their_items_dropped(tmp_path):
  root = synthetic.write(tmp_path / "world")
  (root / "posters" / "3.png").write_bytes(b"garbage")
  (root / "posters" / "4.png").unlink()
  stats = prepare(DataSpec(name="synthetic", root=str(root), image_size=16, windows=WINDOWS), tmp_path / "store")
  assert stats["dropped"]["image_corrupt"] == 1 and stats["dropped"]["item_image_missing"] == 1
  assert "3.png" in stats["examples"]["image_corrupt"][0]
  assert stats["dropped"]["item_without_image"] > 0


def test_resume_gives_the_identical_remaining_batches(world):
  spec, store, _ = world
  src = HistorySource(spec, str(store), "train")
  it, _ = batches(make_loader(src, batch_size=8, seed=3, shard_index=0, shard_count=1), 3)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = iter(make_loader(src, batch_size=8, seed=3, shard_index=0, shard_count=1))
  resumed.set_state(state)
  for want in expected:
    assert_same(next(resumed), want)


def test_workers_and_hosts(world):
  spec, store, _ = world
  src = HistorySource(spec, str(store), "train")
  # Worker processes: deterministic, and resumable like a single process.
  def multi():
    return make_loader(src, batch_size=4, seed=1, worker_count=2, shard_index=0, shard_count=1)
  it, first = batches(multi(), 3)
  state = it.get_state()
  rest = [{k: np.array(v) for k, v in next(it).items()} for _ in range(2)]
  _, again = batches(multi(), 3)
  for a, b in zip(first, again):
    assert_same(a, b)
  resumed = iter(multi())
  resumed.set_state(state)
  for want in rest:
    assert_same({k: np.array(v) for k, v in next(resumed).items()}, want)
  seen = []
  for host in range(2):
    loader = make_loader(src, batch_size=4, seed=1, num_epochs=1, shuffle=False, drop_remainder=False,
                         shard_index=host, shard_count=2)
    seen.append([tuple(x) for b in loader for x in b["item_ids"].tolist()])
  assert not set(seen[0]) & set(seen[1])
  assert len(seen[0]) + len(seen[1]) >= len(src) - 1


def test_hosts_read_their_rows_of_one_global_order(world):
  """Two hosts' batches are the rows of one host's batches of twice their size, in process order: the
  global batch (and so the training) is the same on any number of hosts."""
  spec, store, _ = world
  src = HistorySource(spec, str(store), "train")
  _, one = batches(make_loader(src, batch_size=8, seed=5, shard_index=0, shard_count=1), 3)
  _, first = batches(make_loader(src, batch_size=4, seed=5, shard_index=0, shard_count=2), 3)
  _, second = batches(make_loader(src, batch_size=4, seed=5, shard_index=1, shard_count=2), 3)
  for want, a, b in zip(one, first, second):
    np.testing.assert_array_equal(np.concatenate([a["item_ids"], b["item_ids"]]), want["item_ids"])
