"""Reward-hacking defence signals: the paper's failure was one popular poster for every user, with the
reward's spread collapsing as it began. Signals, logged every GRPO step:

- reward spread collapse: the batch's (raw) reward std falls below `std_ratio` x the median std of
  the last `window` steps;
- convergence across users: the mean cosine similarity s between embeddings of images generated for
  DIFFERENT users. Its level depends on the embedding (CLIP, DINO, token histograms, pixels: with
  pixels any two posters are above 0.8), so the threshold is relative to the run's own first
  `warmup` steps (the baseline b): flagged when the distance 1 - s falls below `distance_ratio` x
  (1 - b), i.e. images for different users became that much closer than they were at the start;
- token collapse: the entropy of the batch's image-token histogram falls below `entropy_ratio` x the
  first step's, whose samples the parameters before any update drew. The baseline is that one step, not
  the first `warmup`, since at a high lr the collapse is already under way within them (seen: lr 5e-3,
  entropy 4.15 -> 1.77 by step 5; a 5-step baseline of 3.4 +- 0.9 flags nothing). 0.45: a hack on
  the demo fell to 0.4 of its start within 7 steps, its healthy 40-step run (SFT start, lr 2e-3) to 0.5
  once (halving the entropy in nats is the effective number of tokens falling to its square root);
- image-statistics drift (`drift_stats`): brightness, saturation, edge density of the images and the
  entropy of the batch's image-token histogram; flagged when one named in `drift_alarm` leaves its
  baseline mean by more than `drift_z` baseline standard deviations.

An alarm needs `patience` consecutive flagged steps. It names the earliest parameters whose samples
were flagged in that streak (`suspect_from`): a roll-back goes to a checkpoint from before them, since
a checkpoint whose own samples were flagged is no healthier than the alarm's step. The similarity
itself is pgen_jax.rewards.similarity's.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DefenceConfig:
  window: int = 20
  std_ratio: float = 0.3
  distance_ratio: float = 0.5     # cross-user distance 1 - s below this share of the baseline's
  patience: int = 3
  warmup: int = 5                 # steps of history before any alarm; the baseline's steps
  drift_alarm: tuple[str, ...] = ()  # drift statistics the alarm uses (keys of drift_stats)
  drift_z: float = 6.0
  entropy_ratio: float = 0.45     # token entropy below this share of the first step's (0: off)
  response: str = "stop"          # stop | rollback
  diversity_weight_factor: float = 2.0  # rollback: multiply the diversity term's weight
  lr_factor: float = 0.5                # rollback: multiply the learning rate


DRIFT = ("brightness", "saturation", "edge_density", "token_entropy")


def drift_stats(tokens: np.ndarray, images: np.ndarray | None, vocab: int) -> dict[str, float]:
  """Batch statistics whose drift marks a policy converging on one kind of image: mean brightness
  (0..1), mean HSV saturation (0..1), share of pixels on an edge (luma gradient above 0.1), and the
  entropy (nats) of the batch's image-token histogram. Image statistics need decoded images."""
  counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  out = {"token_entropy": float(-(p * np.log(p)).sum())}
  if images is not None:
    x = np.asarray(images, np.float32) / 255.0
    hi, lo = x.max(-1), x.min(-1)
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
    gy, gx = np.abs(np.diff(luma, axis=-2))[..., :, :-1], np.abs(np.diff(luma, axis=-1))[..., :-1, :]
    out.update(brightness=float(luma.mean()), saturation=float(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0).mean()),
               edge_density=float((np.hypot(gx, gy) > 0.1).mean()))
  return out


@dataclasses.dataclass
class Alarm:
  step: int
  reasons: list[str]
  suspect_from: int  # the step of the parameters that drew the streak's first flagged samples


class HackingMonitor:
  def __init__(self, settings: DefenceConfig = DefenceConfig()):
    self.settings = settings
    self.stds: collections.deque = collections.deque(maxlen=settings.window)
    self.flagged = 0
    self.suspect_from = 0  # see Alarm
    self.early: dict[str, list[float]] = {}  # the first `warmup` steps of similarity and drift stats

  def _baseline(self, key: str):
    v = self.early.get(key, [])
    return (float(np.mean(v)), float(np.std(v))) if len(v) >= self.settings.warmup else None

  def update(self, step: int, reward_std: float, similarity: float, drift: dict | None = None,
             drawn_by: int | None = None) -> Alarm | None:
    """One GRPO step's signals; `drawn_by`: the step of the parameters that drew its samples (default
    step - 1: sampled on-policy before the step's update)."""
    defence, reasons = self.settings, []
    if len(self.stds) >= defence.warmup and reward_std < defence.std_ratio * float(np.median(self.stds)):
      reasons.append(f"reward std {reward_std:.4g} < {defence.std_ratio} x recent median {np.median(self.stds):.4g}")
    base = self._baseline("similarity")
    if base is not None and 1.0 - similarity < defence.distance_ratio * (1.0 - base[0]):
      reasons.append(f"images for different users are {similarity:.4f} similar (baseline {base[0]:.4f}: distance "
                     f"below {defence.distance_ratio} x the baseline's)")
    for key in defence.drift_alarm:
      base = self._baseline(key)
      if base is not None and drift and key in drift and abs(drift[key] - base[0]) > defence.drift_z * max(base[1], 1e-6):
        reasons.append(f"{key} drifted to {drift[key]:.4g} (baseline {base[0]:.4g} +- {base[1]:.2g})")
    first = self.early.get("token_entropy", [])
    if defence.entropy_ratio and first and drift and "token_entropy" in drift and \
        drift["token_entropy"] < defence.entropy_ratio * first[0]:
      reasons.append(f"token entropy fell to {drift['token_entropy']:.4g} (first step {first[0]:.4g}: below "
                     f"{defence.entropy_ratio} x)")
    self.stds.append(float(reward_std))
    for key, v in {"similarity": similarity, **(drift or {})}.items():
      if len(self.early.setdefault(key, [])) < defence.warmup:
        self.early[key].append(float(v))
    if reasons and not self.flagged:
      self.suspect_from = step - 1 if drawn_by is None else drawn_by
    self.flagged = self.flagged + 1 if reasons else 0
    return Alarm(step, reasons, self.suspect_from) if self.flagged >= defence.patience else None

  def after_rollback(self) -> None:
    """Forgets the recent (hacked) steps; the baseline from the run's start stays."""
    self.stds.clear()
    self.flagged = 0

  def state(self) -> dict:
    return {"stds": list(self.stds), "flagged": self.flagged, "suspect_from": self.suspect_from, "early": self.early}

  def restore(self, state: dict) -> None:
    self.stds.clear()
    self.stds.extend(state["stds"])
    self.flagged = state["flagged"]
    self.suspect_from = state.get("suspect_from", 0)
    self.early = {k: list(v) for k, v in state.get("early", {}).items()}
