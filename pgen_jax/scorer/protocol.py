"""The scorer's wire format: JSON only (never pickle), images as base64 of raw uint8 pixels.

POST /score  {"terms": ["nima", "profile"], "images": [{"shape": [H, W, 3], "data": "<base64>"}, ...],
              "profiles": ["user profile text", ...]}   (profiles: one per image, for "profile")
          -> {"nima": [...], "profile": [...]}
GET /health -> {"status": "ok", "terms": [...]}
"""

from __future__ import annotations

import base64

import numpy as np

MAX_PIXELS = 4096 * 4096


class BadRequest(ValueError):
  pass


def encode_images(images: np.ndarray | list[np.ndarray]) -> list[dict]:
  return [{"shape": list(x.shape), "data": base64.b64encode(np.ascontiguousarray(x, np.uint8).tobytes()).decode()}
          for x in images]


def decode_images(items) -> list[np.ndarray]:
  if not isinstance(items, list) or not items:
    raise BadRequest("'images' must be a non-empty list")
  out = []
  for i, item in enumerate(items):
    try:
      shape = tuple(int(s) for s in item["shape"])
      raw = base64.b64decode(item["data"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
      raise BadRequest(f"images[{i}]: needs 'shape' [H, W, 3] and base64 'data' ({e})") from e
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1 or shape[0] * shape[1] > MAX_PIXELS:
      raise BadRequest(f"images[{i}]: shape {list(shape)} is not [H, W, 3] of at most {MAX_PIXELS} pixels")
    if len(raw) != shape[0] * shape[1] * 3:
      raise BadRequest(f"images[{i}]: {len(raw)} bytes for shape {list(shape)}")
    out.append(np.frombuffer(raw, np.uint8).reshape(shape))
  return out
