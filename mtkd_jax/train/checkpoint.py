"""Orbax checkpoints: the latest (for resuming) and the best (for testing).

Two managers in two directories (STACK.md: with `best_fn` and a small
`max_to_keep` Orbax may delete the latest checkpoint, which resume needs):
  <workdir>/checkpoints/  the last `keep` checkpoints, with the loop state
                          (best metric so far, evals without improvement);
  <workdir>/best/         one checkpoint, the best on validation so far, with
                          its validation metrics.
Saves are atomic (Orbax writes to a temporary directory and renames), so a run
killed mid-save resumes from the previous complete checkpoint. Each save is
waited for before training goes on (a kill loses at most `checkpoint_every`
steps), after a free-space check, and gets a sha256 manifest; a restore skips
damaged steps for the newest good one (`checkpoint_integrity`).
"""
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from mtkd_jax import paths
from mtkd_jax.train import checkpoint_integrity as integrity
from mtkd_jax.train import workdir as workdir_lib


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _options(max_to_keep: int, name: str) -> ocp.CheckpointManagerOptions:
  """Options of one manager; `name` keeps its multi-host barriers apart
  (both managers save the same step, and Orbax's barrier keys are per step)."""
  return ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=name))


class Checkpointer:
  """The latest and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    self._workdir = paths.path(workdir)
    self._restored_best = None
    self._latest = ocp.CheckpointManager(
        self._workdir / "checkpoints",
        options=_options(max_to_keep=keep, name="latest"))
    self._best = ocp.CheckpointManager(
        self._workdir / "best",
        options=_options(max_to_keep=2, name="best"))

  def latest_step(self) -> Optional[int]:
    return self._latest.latest_step()

  def best_step(self) -> Optional[int]:
    """The step `restore_best` restored, else the newest best step."""
    if self._restored_best is not None:
      return self._restored_best
    return self._best.latest_step()

  def _save(self, manager, step, state, args) -> None:
    """Saves, waits for the commit, records the checksums."""
    workdir_lib.check_free_space(self._workdir, integrity.tree_nbytes(state))
    manager.save(step, args=args)
    manager.wait_until_finished()
    if jax.process_index() == 0:
      integrity.write_manifest(manager.directory / str(step))

  def save_latest(self, step: int, state, loop_state: dict) -> None:
    if step in self._latest.all_steps():
      return
    self._save(self._latest, step, state, ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        loop=ocp.args.JsonSave(loop_state)))

  def restore_latest(self, like_state) -> Tuple[Any, dict]:
    """(state, loop_state) of the newest checkpoint that restores, placed
    like `like_state`; (None, None) when there is none."""
    _, out = integrity.restore_newest(
        self._latest, lambda step: self._latest.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(like_state)),
                loop=ocp.args.JsonRestore())), self._workdir, "latest")
    return (None, None) if out is None else (out.state, dict(out.loop))

  def save_best(self, step: int, state, metrics: dict) -> None:
    if step in self._best.all_steps():  # same step after a resume: identical
      return
    self._save(self._best, step, state, ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        metrics=ocp.args.JsonSave(metrics)))

  def restore_best(self, like_state) -> Tuple[Any, dict]:
    step, out = integrity.restore_newest(
        self._best, lambda step: self._best.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(like_state)),
                metrics=ocp.args.JsonRestore())), self._workdir, "best")
    if step is None:
      raise FileNotFoundError("No best checkpoint was saved (no evaluation ran).")
    self._restored_best = step
    return out.state, dict(out.metrics)

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()
