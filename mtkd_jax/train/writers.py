"""Metric writers: a JSON-lines file and TensorBoard events, process 0 only.

`<workdir>/metrics.jsonl` holds one line per logging event:
`{"step": s, "split": "train" | "validation" | "test", <name>: value, ...}`.
TensorBoard files (tensorboardX, no TensorFlow needed) go to
`<workdir>/tensorboard`. A resumed run first truncates the JSON lines past the
step it resumes from, so the file reads like one uninterrupted run.
"""
import json
import math
from typing import Mapping

import jax
from absl import logging

from mtkd_jax import paths


def _jsonable(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard (only on process 0)."""

  def __init__(self, workdir: str, *, resume_step: int = 0,
               tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._path = paths.workdir(workdir) / "metrics.jsonl"
    self._tb = None
    if not self._active:
      return
    _truncate_after(self._path, resume_step)
    # Object stores (gs://, s3://) cannot append: rewrite the file instead.
    self._lines = None
    if not paths.is_local(workdir):
      self._lines = (self._path.read_text().splitlines(keepends=True)
                     if self._path.exists() else [])
    if tensorboard and paths.scheme(workdir) not in ("", "gs", "s3"):
      logging.warning("No TensorBoard events: tensorboardX writes only to "
                      "local, gs:// and s3:// directories, not %s", workdir)
    elif tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(paths.workdir(workdir) / "tensorboard"),
                               purge_step=resume_step or None)

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self._active:
      return
    record = {"step": int(step), "split": split}
    record.update({k: _jsonable(v) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    if self._lines is None:
      with self._path.open("a") as f:
        f.write(line)
    else:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(f"{split}/{name}", float(value), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _truncate_after(path, step: int) -> None:
  """Drops records with step > `step` (written after the resumed checkpoint)."""
  if not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a crash
      continue
    if record.get("step", 0) <= step and record.get("split") != "test":
      kept.append(line)
  path.write_text("".join(kept))


def read_metrics(workdir: str):
  """All records of `<workdir>/metrics.jsonl` as a list of dicts."""
  text = (paths.workdir(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]
