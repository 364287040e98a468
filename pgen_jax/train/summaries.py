"""TensorBoard summaries where TensorFlow is not installed (e.g. an accelerator VM's image).

The training loops write through clu.metric_writers, whose package imports its TensorFlow
SummaryWriter: without TensorFlow, no training stage would even import. `install()` (run by
pgen_jax/train/__init__.py) puts a stand-in for that one clu module first, only when TensorFlow cannot
be found: an EventWriter that writes the same event files with the tensorboard package alone
(scalars and images; clu's LoggingWriter beside it still logs everything), or, without tensorboard
either, nothing beyond that log. Where TensorFlow is installed, nothing changes.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import types

import numpy as np

from pgen_jax.viz import png_bytes

_MODULE = "clu.metric_writers.summary_writer"


def _has_tensorflow() -> bool:
  try:
    return importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):  # a finder that refuses it, or a half-removed install
    return False


class EventWriter:
  """clu's MetricWriter methods over tensorboard's EventFileWriter: scalars and images are written;
  texts, histograms, videos, audio and hyperparameters only reach the log (clu's LoggingWriter)."""

  def __init__(self, logdir: str):
    try:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
      logging.warning("neither TensorFlow nor tensorboard is installed: no TensorBoard files in %s", logdir)
      self._file = None
      return
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._file = EventFileWriter(logdir)

  def _add(self, step: int, values: list) -> None:
    if self._file is not None and values:
      self._file.add_event(self._event(wall_time=time.time(), step=int(step), summary=self._summary(value=values)))

  def write_scalars(self, step, scalars) -> None:
    if self._file is not None:
      self._add(step, [self._summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

  def write_images(self, step, images) -> None:
    if self._file is None:
      return
    values = []
    for key, batch in images.items():
      batch = np.asarray(batch)
      for i, img in enumerate(batch if batch.ndim == 4 else batch[None]):
        img = img if img.dtype == np.uint8 else np.clip(np.asarray(img) * 255, 0, 255).astype(np.uint8)
        img = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
        pic = self._summary.Image(height=img.shape[0], width=img.shape[1], colorspace=3,
                                  encoded_image_string=png_bytes(img))
        values.append(self._summary.Value(tag=key if len(batch) == 1 or batch.ndim == 3 else f"{key}/{i}",
                                          image=pic))
    self._add(step, values)

  def write_summaries(self, step, values, metadata=None) -> None:
    del step, values, metadata

  def write_videos(self, step, videos) -> None:
    del step, videos

  def write_audios(self, step, audios, *, sample_rate) -> None:
    del step, audios, sample_rate

  def write_texts(self, step, texts) -> None:
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    del step, arrays, num_buckets

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None) -> None:
    del step, point_clouds, point_colors, configs

  def write_hparams(self, hparams) -> None:
    del hparams

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def install() -> bool:
  """Without TensorFlow, and before clu.metric_writers is imported: clu's SummaryWriter becomes an
  EventWriter. True when the stand-in is in place."""
  if _MODULE in sys.modules:
    return getattr(sys.modules[_MODULE], "SummaryWriter", None) is EventWriter
  if _has_tensorflow():
    return False
  stand_in = types.ModuleType(_MODULE, "clu's SummaryWriter without TensorFlow (pgen_jax.train.summaries)")
  stand_in.SummaryWriter = EventWriter
  sys.modules[_MODULE] = stand_in
  return True
