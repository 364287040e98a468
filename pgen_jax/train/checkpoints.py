"""Orbax checkpoints of a run: `latest/` (keep-N, for resuming) and `best/` (by validation loss).

A latest checkpoint holds the training state (trainable params, optimizer, step, counters) and the
data iterator's state, so a resumed run continues with exactly the next batch. Saves are
asynchronous; orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  def __init__(self, directory: str | Path, keep: int = 3):
    directory = Path(directory).resolve()
    self.latest = ocp.CheckpointManager(directory / "latest", options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=True))
    self.best = ocp.CheckpointManager(directory / "best", options=ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda m: m["val_loss"], best_mode="min",
        enable_async_checkpointing=True))

  def save(self, step: int, state, data_state: bytes | str) -> None:
    data = data_state.decode() if isinstance(data_state, bytes) else data_state
    self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave({"iterator": data})))

  def save_best(self, step: int, params, val_loss: float) -> None:
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                   metrics={"val_loss": float(val_loss)})

  def restore_latest(self, like):
    """(step, state, data iterator state) of the latest checkpoint, or None. `like`: the state's shape."""
    step = self.latest.latest_step()
    return None if step is None else self.restore(step, like)

  def restore(self, step: int, like):
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    out = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                            data=ocp.args.JsonRestore()))
    return step, out["state"], out["data"]["iterator"]

  def latest_before(self, step: int) -> int | None:
    """The newest kept checkpoint from before `step`, or None."""
    self.latest.wait_until_finished()
    return max((s for s in self.latest.all_steps() if s < step), default=None)

  def roll_back(self, step: int, like):
    """Restores checkpoint `step` and deletes the later ones, in best/ too: a run resumed after the
    roll-back must not pick up one written before it, best/ must not keep parameters the roll-back
    abandoned, and orbax skips saving any step not above the newest one kept."""
    self.wait()
    for manager in (self.latest, self.best):
      for later in [s for s in manager.all_steps() if s > step]:
        manager.delete(later)
    return self.restore(step, like)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()
