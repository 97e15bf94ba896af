"""Teachers: trained runs restored from their best checkpoint and frozen.

A teacher is any finished `experiments.run` workdir: its `config.json` says
how to rebuild the model, `<workdir>/best` holds the parameters chosen on
validation and `results.json` its validation and test metrics. Only the
parameters are restored (no optimizer state); they are passed into the
student's jit step as an argument and never saved with the student
(big_vision's distill trainer does the same).
"""
import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mtkd_jax import errors
from mtkd_jax import paths
from mtkd_jax import models
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.distill import mutual

# Data-config keys that say where the files are, not what the data is.
LOCATION_KEYS = ("data_dir", "tfds_dir", "cache_dir")


class Teacher(NamedTuple):
  """A frozen trained run.

  Attributes:
    workdir: the teacher's run directory.
    config: its experiment config.
    model: its linen module, built over the student's dataset spec.
    params: its best-on-validation parameters (host arrays).
    validation: its best validation metrics; test: its test metrics.
    calibration: task -> (a, b), Platt scaling a*z + b of its logits
      (identity (1, 0) unless `distill.calibrate`).
  """
  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  validation: Dict[str, float]
  test: Dict[str, float]
  calibration: Dict[str, Tuple[float, float]]


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = paths.path(workdir) / "config.json"
  if not path.exists():
    raise errors.ConfigError(
        f"Teacher workdir {str(workdir)!r} holds no trained run (no "
        "config.json); train the teacher first: python -m experiments.run "
        f"--config ... --workdir {workdir}")
  return ml_collections.ConfigDict(paths.read_json(path))


def check_compatible(student_config, teacher_config, workdir: str,
                     distilled_tasks: Sequence[str]) -> None:
  """Stops with a message naming what differs between teacher and student.

  Both must read the same dataset with the same features and tasks (the
  data configs agree on every key except file locations; the tasks come from
  the data).
  """
  student = {k: v for k, v in student_config.data.to_dict().items()
             if k not in LOCATION_KEYS}
  teacher = {k: v for k, v in teacher_config.data.to_dict().items()
             if k not in LOCATION_KEYS}
  differ = sorted(k for k in set(student) | set(teacher)
                  if _plain(student.get(k)) != _plain(teacher.get(k)))
  if differ:
    details = "; ".join(f"{k}: student {student.get(k)!r}, teacher "
                        f"{teacher.get(k)!r}" for k in differ)
    raise errors.ConfigError(
        f"Teacher {workdir!r} was trained on other data or features than the "
        f"student ({details}).")
  del distilled_tasks  # same data config: the teacher has the same tasks


def _plain(value):
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def restore_params(workdir: str):
  """The `params` of the best checkpoint of a run, as host numpy arrays.

  The run may have been saved on other devices (8 fake CPUs, a GPU): every
  leaf is restored onto this process's first device, by the shapes and
  dtypes of the checkpoint's own metadata.
  """
  directory = paths.path(workdir) / "best"
  manager = ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.StandardCheckpointHandler(),
      "metrics": ocp.JsonCheckpointHandler()})
  step = manager.latest_step()
  if step is None:
    raise errors.ConfigError(
        f"Run {workdir!r} has no best checkpoint in {directory}; did it "
        "finish an evaluation?")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      manager.item_metadata(step)["state"])
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  manager.close()
  return jax.tree.map(np.asarray, out.state["params"])


def load_teacher(workdir: str, student_config, base_spec: specs_lib.DatasetSpec,
                 extras=None, distilled_tasks: Sequence[str] = (), *,
                 table_row_multiple: Callable[[Any], int]) -> Teacher:
  """Restores the run in `workdir` as a frozen teacher for `student_config`.

  Args:
    base_spec: the dataset's spec before the student's task overrides (the
      teacher applies its own).
    table_row_multiple: a run's config -> the multiple its embedding tables'
      rows were padded to (the trainer's `train.mesh` rule), so that the
      teacher's tables are rebuilt as it trained them.
  """
  teacher_config = read_run_config(workdir)
  check_compatible(student_config, teacher_config, workdir, distilled_tasks)
  spec = dataclasses.replace(  # its tables as it padded them (train.mesh)
      base_spec.with_task_overrides(teacher_config.tasks.to_dict()),
      table_row_multiple=table_row_multiple(teacher_config))
  model = mutual.maybe_wrap(models.build_model(spec, teacher_config.model,
                                               extras), spec, teacher_config)
  params = restore_params(workdir)
  validation, test = {}, {}
  results = paths.path(workdir) / "results.json"
  if results.exists():
    saved = paths.read_json(results)
    validation, test = saved.get("validation", {}), saved.get("test", {})
  identity = {t.name: (1.0, 0.0) for t in spec.tasks}
  return Teacher(workdir, teacher_config, model, params, validation, test,
                 identity)


def ensemble_weights(teachers: Sequence[Teacher], how: str, task: str,
                     auc_weights_fn) -> np.ndarray:
  """float[K]: "uniform", or "auc" (each teacher's validation <task>/auc)."""
  k = len(teachers)
  if how == "uniform":
    return np.full((k,), 1.0 / k, np.float32)
  if how == "auc":
    aucs = []
    for t in teachers:
      key = f"{task}/auc"
      if key not in t.validation:
        raise errors.ConfigError(
            f"distill.ensemble_weights='auc' needs {key} in the validation "
            f"metrics of teacher {t.workdir!r} (results.json); it has "
            f"{', '.join(sorted(t.validation)) or 'none'}.")
      aucs.append(t.validation[key])
    return np.asarray(auc_weights_fn(np.asarray(aucs, np.float32)), np.float32)
  raise errors.ConfigError(
      f"Unknown distill.ensemble_weights {how!r}; valid: uniform, auc.")
