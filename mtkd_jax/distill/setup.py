"""Wires a config's `distill` block into a run: teachers, targets, projector.

`prepare` loads the teachers named by `distill.teacher_workdirs` (frozen,
best-on-validation), optionally Platt-calibrates them on validation
(CrossDistil), builds the step's `DistillSpec`, adds the FitNets projector
to the student's initial params, and in offline mode computes the teachers'
targets once over the training rows (cached in the first teacher's workdir,
"next to the data" the teacher was trained on) as columns
"teacher/<task>" of the training split.
"""
import dataclasses
import functools
import hashlib
import json
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mtkd_jax import errors
from mtkd_jax import paths
from mtkd_jax.data import pipeline
from mtkd_jax.distill import teacher as teacher_lib
from mtkd_jax.distill import terms
from mtkd_jax.models import base as model_base
from mtkd_jax.train import evaluate
from mtkd_jax.train import parallel


class Distillation(NamedTuple):
  """What a run needs for distillation (None fields when it is off)."""
  spec: Optional[terms.DistillSpec]
  teachers: Tuple[teacher_lib.Teacher, ...]
  teacher_params: Any  # tuple of teacher params on the mesh (online mode)
  init_params: Any  # the student's params, with the hint projector if any
  train_columns: dict  # the training split, with teacher columns if offline

  @property
  def online(self) -> bool:
    return (self.spec is not None and self.spec.uses_teachers and
            not self.spec.offline)


def fit_platt(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray,
              iterations: int = 50) -> Tuple[float, float]:
  """(a, b) minimising the weighted logloss of sigmoid(a z + b) (Platt 1999).

  Newton's method on the two-parameter logistic regression; a ridge of 1e-6
  keeps the Hessian invertible on separable data.
  """
  z = np.asarray(logits, np.float64)
  y = np.asarray(labels, np.float64)
  w = np.asarray(weights, np.float64)
  x = np.stack([z, np.ones_like(z)], axis=1)
  theta = np.array([1.0, 0.0])
  for _ in range(iterations):
    p = 1.0 / (1.0 + np.exp(-(x @ theta)))
    grad = x.T @ (w * (p - y)) + 1e-6 * theta
    hess = (x * (w * p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
    step = np.linalg.solve(hess, grad)
    theta = theta - step
    if np.max(np.abs(step)) < 1e-10:
      break
  return float(theta[0]), float(theta[1])


def _calibrate(teacher, splits, spec, mesh, mode, batch_size):
  """The teacher with Platt (a, b) per binary task, fitted on validation."""
  eval_fn = _compiled_targets_fn(
      terms.DistillSpec(teacher_models=(teacher.model,),
                        calibration=({},),
                        tasks=tuple(t for t in spec.tasks if t.kind == "binary"),
                        ensemble_weights={}),
      mesh, mode)
  columns = splits.validation
  put = functools.partial(parallel.shard_batch, mode=mode, mesh=mesh)
  params = parallel.replicate((teacher.params,), mesh)
  preds = evaluate.predict(eval_fn, params, columns, batch_size, put)
  calibration = dict(teacher.calibration)
  for task in spec.tasks:
    if task.kind == "binary" and task.name in preds:
      calibration[task.name] = fit_platt(preds[task.name],
                                         columns[f"labels/{task.name}"],
                                         columns["weights"])
  logging.info("Platt calibration of teacher %s: %s", teacher.workdir,
               calibration)
  return teacher._replace(calibration=calibration)


def _compiled_targets_fn(dspec, mesh, mode):
  def per_device(teacher_params, batch):
    return terms.teacher_targets(teacher_params, batch, dspec)
  return parallel.compile_step(per_device, mode, mesh, out_batched=True,
                               donate_state=False)


def _cache_key(dspec: terms.DistillSpec, teachers, num_rows: int) -> str:
  blob = json.dumps({
      "teachers": [str(paths.path(t.workdir)) for t in teachers],
      "calibration": [dict(t.calibration) for t in teachers],
      "tasks": [t.name for t in dspec.tasks],
      "weights": {k: np.asarray(v).tolist()
                  for k, v in dspec.ensemble_weights.items()},
      "space": dspec.ensemble_space, "hint": dspec.hint_feature,
      "rows": num_rows}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def offline_targets(dspec, teachers, columns, mesh, mode, batch_size):
  """{"teacher/<name>": np.ndarray[N, ...]} over `columns`, cached on disk."""
  n = len(columns["weights"])
  path = (paths.path(teachers[0].workdir) / "distill_targets" /
          f"train_{_cache_key(dspec, teachers, n)}.npz")
  if path.exists():
    logging.info("Offline teacher targets from %s.", path)
    return paths.load_npz(path)
  fn = _compiled_targets_fn(dspec, mesh, mode)
  put = functools.partial(parallel.shard_batch, mode=mode, mesh=mesh)
  params = parallel.replicate(tuple(t.params for t in teachers), mesh)
  preds = evaluate.predict(fn, params, columns, batch_size, put)
  out = {f"teacher/{k}": np.asarray(v) for k, v in preds.items()}
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp.npz")
    paths.save_npz(tmp, out)
    tmp.replace(path)  # atomic locally: a crash never leaves half a file
    logging.info("Offline teacher targets written to %s.", path)
  return out


def resolve_workdirs(templates, workdir: str, seed: int) -> Tuple[str, ...]:
  """Teacher workdirs with "{parent}" (the directory holding the student's
  workdir, e.g. a sweep dir) and "{seed}" (the student's seed) filled in."""
  parent = str(paths.path(workdir).parent)
  return tuple(p.replace("{parent}", parent).replace("{seed}", str(seed))
               for p in templates)


def prepare(config, splits, spec, model, init_params, example_batch, mesh,
            mode: str, workdir: str = ".") -> Distillation:
  """Everything distillation adds to a run; a no-op when it is off."""
  dcfg = terms.resolve_methods(config.distill)
  workdirs = resolve_workdirs(dcfg.teacher_workdirs, workdir, config.seed)
  names = tuple(dcfg.tasks) or spec.task_names
  for name in names:
    spec.task(name)  # unknown task names list the valid ones
  teachers = tuple(teacher_lib.load_teacher(w, config, splits.spec,
                                            splits.extras, names)
                   for w in workdirs)
  if dcfg.calibrate:
    teachers = tuple(_calibrate(t, splits, spec, mesh, mode,
                                config.eval.batch_size) for t in teachers)
  dspec = terms.make_distill_spec(dcfg, spec, teachers)
  train_columns = splits.train
  params = init_params
  if dspec is None:
    return Distillation(None, (), None, params, train_columns)
  if dspec.hint_feature:
    targets = jax.eval_shape(
        lambda tp: terms.teacher_targets(tp, example_batch, dspec),
        tuple(t.params for t in teachers))
    _, student_aux = jax.eval_shape(
        lambda p: model.apply({"params": p}, example_batch, train=False), params)
    feature = model_base.aux_feature(student_aux, dspec.hint_feature,
                                     "The student")
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x417)
    params = {**params, terms.HINT_PARAMS: terms.init_hint_projector(
        rng, jnp.zeros(feature.shape),
        jnp.zeros(targets[terms.FEATURES].shape))}
  if dspec.offline and dspec.uses_teachers:
    train_columns = {**splits.train, **offline_targets(
        dspec, teachers, splits.train, mesh, mode, config.eval.batch_size)}
  teacher_params = None
  if dspec.uses_teachers and not dspec.offline:
    teacher_params = parallel.replicate(tuple(t.params for t in teachers), mesh)
  return Distillation(dspec, teachers, teacher_params, params, train_columns)

