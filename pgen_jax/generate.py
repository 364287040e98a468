"""Images for one history, from the command line:

  python -m pgen_jax.generate --workdir=runs/demo --user=ID [--samples=4 --cfg=5 --seed=0]
  python -m pgen_jax.generate --workdir=runs/demo --history=ID,ID,...     # item ids of the prepared store
  python -m pgen_jax.generate --workdir=runs/demo --history_file=FILE     # JSON [{"image": path, "text": ...}]

The run's config is <workdir>/config.json (written by pgen_jax.main); the model is the newest trained
one there (grpo/final, else sft/final) or --checkpoint (a pgen_jax or HF Janus directory). --user takes
the user's latest history_len items in the prepared store. Writes <out>/sample_K.png and
<out>/contact_sheet.png (history | samples; out defaults to <workdir>/generate/<what>) and prints their
paths. Bad input (unknown user or item, missing or unreadable file) is one line naming it, exit 2.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from PIL import Image

from pgen_jax import cli
from pgen_jax.data.images import ImageSkip, load_rgb, understanding_input
from pgen_jax.data.pipeline import spec_from_config, store_dir
from pgen_jax.data.store import builders
from pgen_jax.errors import ConfigError, InputError
from pgen_jax.fileio import atomic_directory
from pgen_jax.sampling import Sampler, SamplingConfig
from pgen_jax.sampling.prompter import Prompter, prompt_batch
from pgen_jax.settings import Settings, from_config
from pgen_jax.setup import mesh_from_config, model_from_config, trained_checkpoint, use_compile_cache
from pgen_jax.viz import png_bytes

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "The run's directory (holds config.json and the models).")
_USER = flags.DEFINE_integer("user", None, "A user id of the prepared store: their latest history.")
_HISTORY = flags.DEFINE_list("history", None, "Item ids of the prepared store, oldest first.")
_HISTORY_FILE = flags.DEFINE_string("history_file", None, 'A JSON list of {"image": path, "text": ...}.')
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "A pgen_jax or HF Janus directory; default: the newest "
                                  "trained model in --workdir.")
_SAMPLES = flags.DEFINE_integer("samples", 4, "Images to generate.", lower_bound=1)
_CFG = cli.finite_float("cfg", 5.0, "Classifier-free guidance weight.")
_TEMPERATURE = cli.finite_float("temperature", 1.0, "Sampling temperature (0: greedy).", lower_bound=0.0)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OUT = flags.DEFINE_string("out", "", "Output directory; default <workdir>/generate/<user-ID|history-...>.")


def load_config(workdir: Path) -> Settings:
  """The run's typed settings, from the config.json pgen_jax.main wrote there."""
  path = workdir / "config.json"
  if not path.is_file():
    raise InputError(f"{path}: not found; run `python -m pgen_jax.main --config=...` with this workdir first")
  try:
    return from_config(json.loads(path.read_text()))
  except (json.JSONDecodeError, TypeError, AttributeError, ConfigError) as e:
    raise InputError(f"{path}: not a run config of this version ({e}); rerun pgen_jax.main with this "
                     "workdir") from e


def items_by_id(cfg) -> dict[int, dict]:
  try:
    items, _ = builders(spec_from_config(cfg), store_dir(cfg))
    source = items.as_data_source(split="items")
  except Exception as e:  # a store that is missing or from other inputs
    raise InputError(f"{store_dir(cfg)}: no prepared store for this config ({type(e).__name__}); run the "
                     "prepare stage first") from e
  return {int(source[i]["item_id"]): source[i] for i in range(len(source))}


def _text(t) -> str:
  return t.decode("utf-8") if isinstance(t, bytes) else str(t)


def user_history(cfg, user: int) -> list[int]:
  """The user's latest history_len item ids: the end of their last window (test, else validation, train)."""
  items, windows = builders(spec_from_config(cfg), store_dir(cfg))
  for split in ("test", "validation", "train"):
    if split not in windows.info.splits:
      continue
    source = windows.as_data_source(split=split)
    mine = [source[i] for i in range(len(source)) if int(source[i]["user"]) == user]
    if mine:  # windows are stored in time order per user
      rows = items.as_data_source(split="items")
      return [int(rows[int(i)]["item_id"]) for i in mine[-1]["items"]][-cfg.data.history_len:]
  raise InputError(f"--user={user}: no such user in the prepared store {store_dir(cfg)}")


def history_from_ids(cfg, ids: list[str]):
  items = items_by_id(cfg)
  out = []
  for raw in ids:
    if not raw.strip().isdigit() or int(raw) not in items:
      raise InputError(f"--history: item {raw.strip()!r} is not in the prepared store ({len(items)} items)")
    row = items[int(raw)]
    out.append((row["understanding"], _text(row["text"])))
  return out


def history_from_file(cfg, path: Path):
  if not path.is_file():
    raise InputError(f"{path}: history file not found")
  try:
    entries = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path}: not JSON ({e})") from e
  if not isinstance(entries, list) or not entries:
    raise InputError(f'{path}: expected a non-empty JSON list of {{"image": path, "text": ...}}')
  out = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or "image" not in entry:
      raise InputError(f'{path}: entry {i} has no "image" key')
    image = Path(entry["image"])
    image = image if image.is_absolute() else path.parent / image
    if not image.is_file():
      raise InputError(f"{path}: entry {i}: image {image} not found")
    try:
      img = load_rgb(image)
    except ImageSkip as e:
      raise InputError(f"{path}: entry {i}: cannot read image {image} ({e.reason})") from e
    out.append((understanding_input(img, cfg.data.image_size), str(entry.get("text", ""))))
  return out


def contact_sheet(history: list[np.ndarray], samples: np.ndarray, gap: int = 4, min_tile: int = 128) -> np.ndarray:
  """One row: the history images | the samples, a white gap, uint8; small images are enlarged by an
  integer factor (nearest neighbour, so every pixel stays visible) to tiles of at least `min_tile`."""
  s = samples.shape[1]
  tiles = list(history) + [None] + list(samples)
  sheet = np.full((s, len(history) * s + len(samples) * s + gap, 3), 255, np.uint8)
  x = 0
  for t in tiles:
    if t is None:
      x += gap
      continue
    sheet[:, x:x + s] = t
    x += s
  scale = max(1, -(-min_tile // s))
  return sheet.repeat(scale, 0).repeat(scale, 1)


def generate(cfg, history, checkpoint: str, samples: int, cfg_weight: float, temperature: float, seed: int):
  source = checkpoint or trained_checkpoint(cfg)
  if checkpoint and not Path(checkpoint).is_dir():
    raise InputError(f"--checkpoint: {checkpoint} is not a directory")
  if source is None:
    raise InputError(f"{cfg.workdir}: no trained model (grpo/final or sft/final); train one or pass --checkpoint")
  mesh = mesh_from_config(cfg)
  model = model_from_config(cfg, mesh, str(source))
  prompter = Prompter(cfg, model.config)
  x = prompter({"history": np.stack([image for image, _ in history])[None],
                "history_text": [[text for _, text in history]]})
  sampler = Sampler(model, mesh, SamplingConfig(cfg_weight=cfg_weight, temperature=temperature,
                                                num_samples=samples, decode_images=True))
  return np.asarray(sampler(prompt_batch(x, cfg.prompt.uncond), jax.random.key(seed)).images), source


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # the store's and JAX's notices would bury the one-line errors
  try:
    chosen = [n for n, f in (("--user", _USER), ("--history", _HISTORY), ("--history_file", _HISTORY_FILE))
              if f.value is not None]
    if len(chosen) != 1:
      raise InputError(f"give exactly one of --user, --history, --history_file (got {chosen or 'none'})")
    workdir = Path(_WORKDIR.value)
    cfg = load_config(workdir)
    use_compile_cache(cfg.compile_cache)
    if _USER.value is not None:
      ids = [str(i) for i in user_history(cfg, _USER.value)]
      history, what = history_from_ids(cfg, ids), f"user-{_USER.value}"
    elif _HISTORY.value is not None:
      history, what = history_from_ids(cfg, _HISTORY.value), "history-" + "-".join(_HISTORY.value)
    else:
      history, what = history_from_file(cfg, Path(_HISTORY_FILE.value)), f"file-{Path(_HISTORY_FILE.value).stem}"
    if len(history) > cfg.data.history_len:
      history = history[-cfg.data.history_len:]  # prompts were sized for history_len items
    out = Path(_OUT.value) if _OUT.value else workdir / "generate" / what
    if out.exists() and not _ours(out):
      raise InputError(f"--out: {out} exists and holds more than a previous generate output; name a new folder")
    images, source = generate(cfg, history, _CHECKPOINT.value, _SAMPLES.value, _CFG.value, _TEMPERATURE.value,
                              _SEED.value)
  except InputError as e:
    cli.fail(e)
  if out.exists():
    shutil.rmtree(out)  # a rerun replaces the previous output (only ours: checked above)
  with atomic_directory(out) as tmp:
    for k, img in enumerate(images):
      (tmp / f"sample_{k}.png").write_bytes(png_bytes(img))
    hist = [_square(image, images.shape[1]) for image, _ in history]
    (tmp / "contact_sheet.png").write_bytes(png_bytes(contact_sheet(hist, images)))
  print(f"model: {source}", file=sys.stderr)
  for k in range(len(images)):
    print(out / f"sample_{k}.png")
  print(out / "contact_sheet.png")


def _ours(folder: Path) -> bool:
  """Whether `folder` holds only what this command writes (sample_K.png, contact_sheet.png)."""
  return folder.is_dir() and all(p.is_file() and (p.name == "contact_sheet.png" or
                                                  (p.name.startswith("sample_") and p.suffix == ".png"))
                                 for p in folder.iterdir())


def _square(image: np.ndarray, size: int) -> np.ndarray:
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
