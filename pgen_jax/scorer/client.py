"""The training process's side of the scorer: bounded retries with back-off, asynchronous calls.

`submit` returns a Future, so the scorer works on one batch while the policy samples the next.
After the last try a ScorerUnavailable says what failed and where.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

import numpy as np

from pgen_jax.errors import ScorerUnavailable
from pgen_jax.scorer.protocol import encode_images


def profile_text(history_texts: list[str], max_items: int = 10) -> str:
  """The user profile the judge reads: the history's item texts (title | genres or tags), newest last."""
  items = [t.strip() for t in history_texts if t and t.strip()][-max_items:]
  return "Liked, oldest first: " + "; ".join(items) + "." if items else "No history."


class ScorerClient:
  def __init__(self, url: str, *, token: str = "", timeout: float = 120.0, retries: int = 5, backoff: float = 1.0):
    self.url, self.token, self.timeout, self.retries, self.backoff = url.rstrip("/"), token, timeout, retries, backoff
    # Two in flight: the next batch uploads while the scorer (one request at a time) scores this one.
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)

  def _request(self, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if self.token:
      headers["Authorization"] = f"Bearer {self.token}"
    last = None
    for attempt in range(self.retries + 1):
      try:
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
          return json.loads(r.read())
      except urllib.error.HTTPError as e:
        if 400 <= e.code < 500:  # our request is wrong: retrying will not help
          raise ScorerUnavailable(f"{self.url}{path} refused the request ({e.code}): {e.read().decode()[:500]}") from e
        last = e
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        last = e
      if attempt < self.retries:
        time.sleep(self.backoff * 2 ** attempt)
    raise ScorerUnavailable(f"scorer at {self.url} did not answer {path} after {self.retries + 1} tries: {last}")

  def health(self) -> dict:
    return self._request("/health")

  def score(self, images: np.ndarray, terms: list[str], profiles: list[str] | None = None) -> dict[str, np.ndarray]:
    body = {"terms": terms, "images": encode_images(images)}
    if profiles is not None:
      body["profiles"] = list(profiles)
    return {k: np.asarray(v, np.float32) for k, v in self._request("/score", body).items()}

  def submit(self, images, terms, profiles=None) -> concurrent.futures.Future:
    """Score in the background; .result() gives what `score` returns."""
    return self._pool.submit(self.score, np.asarray(images), terms, profiles)
