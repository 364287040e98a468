"""A synthetic MovieLens world, written in the real ml-1m layout (movies.dat, ratings.dat, posters/).

Each genre has its own visual signature on the poster: a base colour and a stripe orientation, with
per-movie jitter and noise. Each user prefers one genre: most of their ratings >= 4 go to movies of
that genre, the rest are low. So a model that learns "next poster from the history" shows it by
drawing the preferred genre's signature. Deterministic given the seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from pgen_jax.fileio import atomic_directory

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
# (R, G, B) base colour and stripe direction per genre.
SIGNATURES = {
    "Action": ((220, 40, 30), "horizontal"), "Comedy": ((240, 210, 40), "vertical"),
    "Drama": ((40, 60, 200), "horizontal"), "Horror": ((30, 30, 30), "vertical"),
    "Romance": ((230, 90, 180), "diagonal"), "Sci-Fi": ((30, 200, 180), "diagonal"),
}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  seed: int = 0
  movies_per_genre: int = 24
  users: int = 96
  ratings_per_user: int = 32
  preferred_share: float = 0.75   # share of a user's ratings that go to the preferred genre
  poster_size: tuple[int, int] = (48, 72)  # width, height: portrait, like real posters


def poster(genre: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  w, h = size
  colour, direction = SIGNATURES[genre]
  yy, xx = np.mgrid[0:h, 0:w]
  period = rng.uniform(7, 10)
  phase = rng.uniform(0, period)
  coord = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}[direction]
  stripes = ((coord + phase) % period) < period / 2
  base = np.clip(np.array(colour) + rng.normal(0, 12, 3), 0, 255)
  img = np.where(stripes[..., None], base, base * 0.4)
  img = img + rng.normal(0, 8, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def genre_of_movie(movie_id: int, cfg: WorldConfig) -> str:
  return GENRES[(movie_id - 1) // cfg.movies_per_genre]


def preferred_genre(user_id: int) -> str:
  return GENRES[(user_id - 1) % len(GENRES)]


def preferred_index(users) -> np.ndarray:
  """Each user's preferred genre as an index into GENRES."""
  return np.array([GENRES.index(preferred_genre(int(u))) for u in users], dtype=np.int64)


def write(root: str | Path, cfg: WorldConfig = WorldConfig()) -> Path:
  """Writes the world to `root` (atomically: a temporary sibling, then a rename); no-op if present."""
  root = Path(root)
  if (root / "ratings.dat").exists():
    return root
  with atomic_directory(root) as tmp:
    rng = np.random.default_rng(cfg.seed)
    (tmp / "posters").mkdir()
    n_movies = cfg.movies_per_genre * len(GENRES)
    lines = []
    for m in range(1, n_movies + 1):
      g = genre_of_movie(m, cfg)
      lines.append(f"{m}::Synthetic {g} Movie {m} ({1980 + m % 40})::{g}")
      Image.fromarray(poster(g, rng, cfg.poster_size)).save(tmp / "posters" / f"{m}.png")
    (tmp / "movies.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    ratings = []
    for u in range(1, cfg.users + 1):
      pref = GENRES.index(preferred_genre(u))
      liked = np.arange(pref * cfg.movies_per_genre + 1, (pref + 1) * cfg.movies_per_genre + 1)
      others = np.setdiff1d(np.arange(1, n_movies + 1), liked)
      n_liked = min(len(liked), int(round(cfg.ratings_per_user * cfg.preferred_share)))
      chosen = [(int(m), int(rng.integers(4, 6))) for m in rng.choice(liked, n_liked, replace=False)]
      chosen += [(int(m), int(rng.integers(1, 4))) for m in rng.choice(others, cfg.ratings_per_user - n_liked,
                                                                       replace=False)]
      rng.shuffle(chosen)
      t0 = 978_300_000 + int(rng.integers(0, 10_000_000))
      for j, (m, r) in enumerate(chosen):
        ratings.append(f"{u}::{m}::{r}::{t0 + 3600 * j}")
    (tmp / "ratings.dat").write_text("\n".join(ratings) + "\n")
  return root


# The pixel-level probe: which genre's signature does an image carry? Independent of any model: it
# reads colour and stripe direction off the pixels. An image's colour is its mean (stripes cover half
# the poster at the base colour, half at 0.4 of it: 0.7 x base); its stripe direction is the one along
# which neighbouring pixels differ least.
DIRECTIONS = ("horizontal", "vertical", "diagonal")
ORIENTATION_WEIGHT = 0.3  # a wrong direction costs about as much as the closest two genres' colour gap


def stripe_direction(images: np.ndarray) -> np.ndarray:
  """uint8 (N, H, W, 3) -> index into DIRECTIONS of each image's stripes."""
  lum = images.astype(np.float32).mean(-1)
  along_x = np.abs(lum[:, :, 1:] - lum[:, :, :-1]).mean((1, 2))       # small for horizontal stripes
  along_y = np.abs(lum[:, 1:, :] - lum[:, :-1, :]).mean((1, 2))       # small for vertical ones
  along_anti = np.abs(lum[:, 1:, :-1] - lum[:, :-1, 1:]).mean((1, 2))  # x+y constant: diagonal ones
  return np.argmin(np.stack([along_x, along_y, along_anti], 1), 1)


def signature_distances(images: np.ndarray) -> np.ndarray:
  """uint8 (N, H, W, 3) -> (N, genres) squared distance of each image's mean colour and stripe
  direction to each genre's signature."""
  colour = images.astype(np.float32).mean((1, 2)) / 255.0
  direction = np.eye(len(DIRECTIONS))[stripe_direction(images)]
  feats = np.concatenate([colour, ORIENTATION_WEIGHT * direction], 1)
  refs = np.array([[*(0.7 * np.array(SIGNATURES[g][0]) / 255.0),
                    *(ORIENTATION_WEIGHT * np.eye(len(DIRECTIONS))[DIRECTIONS.index(SIGNATURES[g][1])])]
                   for g in GENRES])
  return ((feats[:, None] - refs[None]) ** 2).sum(-1)


def pixel_genre(images: np.ndarray) -> np.ndarray:
  """uint8 (N, H, W, 3) -> index into GENRES of the nearest signature by mean colour and stripe direction."""
  return np.argmin(signature_distances(images), 1)


def signature_margin(images: np.ndarray, users) -> np.ndarray:
  """(N,) how much nearer each image is to its user's preferred genre's signature than to the average
  genre's: the world's own judgement of an image, graded (the probe only counts the nearest)."""
  d = signature_distances(images)
  want = preferred_index(users)
  return (d.mean(1) - d[np.arange(len(d)), want]).astype(np.float32)


def pixel_probe(images: np.ndarray, users) -> dict:
  """Share of images whose nearest signature (pixel_genre) is their user's preferred genre's, and the
  share whose stripes alone run in that genre's direction. Chance: 1/6 and about 1/3."""
  want = preferred_index(users)
  want_dir = np.array([DIRECTIONS.index(SIGNATURES[GENRES[w]][1]) for w in want])
  return {"hit_rate": float((pixel_genre(images) == want).mean()),
          "stripe_hit_rate": float((stripe_direction(images) == want_dir).mean()),
          "images": int(len(images)), "chance": 1 / len(GENRES)}
