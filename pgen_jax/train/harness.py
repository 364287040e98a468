"""The training harness the vq, SFT and GRPO stages share: the step loop from the restored step to the
last, orbax checkpoints (latest/ and best/, pgen_jax.train.checkpoints) and resume after a kill -9,
progress with ETA (clu's ReportProgress), metric writers (TensorBoard + log), the non-finite guard's stop
and the cadence of logs, grids, evaluations and checkpoints.

A stage supplies its step function (`step_fn(step, state) -> (state, metrics)`: it draws its own batch,
from an iterator whose state the checkpoints keep), what it logs (`report`), its per-step work between the
log and the checkpoint (`after`: evaluation, grids, a roll-back), the extra state its checkpoints hold
(`data_state`) and what follows a checkpoint (`after_save`: GRPO's validation). Its summary.json, final/
and anything else it writes stay the stage's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
from absl import logging
from clu import metric_writers, periodic_actions

from pgen_jax.errors import RunStopped
from pgen_jax.train.checkpoints import Checkpoints


def finished(name: str, out: Path) -> dict | None:
  """The summary of a stage whose final/ exists (it is not run again), else None."""
  if not (out / "final").exists():
    return None
  logging.info("%s already finished: %s", name, out / "final")
  return json.loads((out / "summary.json").read_text())


def load_summary(out: Path) -> dict:
  """What a killed run's summary.json holds (it persists across a kill, like the checkpoints), or {}."""
  return json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}


def _fetch(metrics: dict) -> dict:
  """The metrics on the host; what is there already (numpy scalars, floats) stays as it is, for the log."""
  got = jax.device_get(metrics)
  return jax.tree.map(lambda x, g: g if isinstance(x, jax.Array) else x, metrics, got)


def _default_report(step: int, m: dict) -> dict:
  del step
  return {k: float(v) for k, v in m.items()}


class Harness:
  """One stage's loop. name: as its log lines say it ("vq", "SFT", "GRPO"); out: the stage's directory.
  max_bad_steps: consecutive non-finite steps (the state's bad_streak) that stop the run; None: never."""

  def __init__(self, name: str, out: Path, *, num_steps: int, log_every: int, ckpt_every: int, keep: int,
               max_bad_steps: int | None = None):
    self.name, self.out, self.num_steps = name, Path(out), num_steps
    self.log_every, self.ckpt_every, self.max_bad_steps = log_every, ckpt_every, max_bad_steps
    self.out.mkdir(parents=True, exist_ok=True)
    self.ckpts = Checkpoints(self.out, keep=keep)
    self.writer = metric_writers.create_default_writer(str(self.out / "tb"), just_logging=jax.process_index() > 0)
    self.reset_progress()

  def reset_progress(self) -> None:
    """Progress and ETA counted afresh (after a roll-back the steps repeat)."""
    self.progress = periodic_actions.ReportProgress(num_train_steps=self.num_steps, writer=self.writer,
                                                    every_steps=self.log_every)

  def due(self, step: int, every: int) -> bool:
    """Whether something done every `every` steps (and at the last) is done after `step`."""
    return step % every == 0 or step == self.num_steps

  def resume(self, state):
    """(step, state, the checkpoint's extra state or None) from latest/, or (0, state, None)."""
    restored = self.ckpts.restore_latest(state)
    if restored is None:
      return 0, state, None
    step, state, data_state = restored
    logging.info("resumed %s at step %d", self.name, step)
    return step, state, data_state

  def stop_if_bad(self, step: int, m: dict) -> None:
    """RunStopped once max_bad_steps steps in a row were non-finite; latest/ keeps the last good state."""
    streak = int(m.get("bad_streak", 0))
    if self.max_bad_steps is not None and streak >= self.max_bad_steps:
      self.ckpts.wait()
      skipped = f" ({int(m['skipped'])} skipped in all)" if "skipped" in m else ""
      raise RunStopped(f"{self.name} stopped at step {step}: {streak} steps in a row had a non-finite loss or "
                       f"gradient{skipped}; the last good checkpoint is step {self.ckpts.latest.latest_step()} "
                       f"in {self.out / 'latest'}")

  def save(self, step: int, state, data_state: str | bytes) -> bool:
    """Saves latest/ unless the step is in a bad streak (never checkpoint one); True when saved."""
    if int(jax.device_get(state["bad_streak"])):
      return False
    self.ckpts.save(step, state, data_state)
    return True

  def run(self, step: int, state, step_fn: Callable, *, report: Callable = _default_report,
          after: Callable | None = None, data_state: Callable[[], str | bytes] = lambda: "",
          after_save: Callable | None = None, sync_every_step: bool = False):
    """Steps from `step` to num_steps; returns the final state.

    step_fn(step, state) -> (state, metrics). Every log_every steps (every step with sync_every_step, for
    a stage whose metrics are on the host anyway) the metrics are fetched; at log steps report(step, m)
    gives the scalars written; then the non-finite stop. after(step, state, m) (m: None where not
    fetched) returns None, or (step, state) restored from an earlier checkpoint (a roll-back): the loop goes
    on from there, without this step's checkpoint, counting progress afresh. Every ckpt_every steps
    latest/ is saved with data_state() (never in a bad streak), then after_save(step, state) runs.
    """
    while step < self.num_steps:
      state, metrics = step_fn(step, state)
      step += 1
      self.progress(step)
      m = None
      if sync_every_step or self.due(step, self.log_every):
        m = _fetch(metrics)
        if self.due(step, self.log_every):
          self.writer.write_scalars(step, report(step, m))
        self.stop_if_bad(step, m)
      jump = after(step, state, m) if after is not None else None
      if jump is not None:
        step, state = jump
        self.reset_progress()
        continue
      if self.due(step, self.ckpt_every) and self.save(step, state, data_state()) and after_save is not None:
        after_save(step, state)
    return state

  def finish(self) -> None:
    """Waits for the checkpoints being written and flushes the writers."""
    self.ckpts.wait()
    self.writer.flush()

  def close(self) -> None:
    self.ckpts.close()
