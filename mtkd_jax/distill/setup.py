"""The teachers' side of a run: workdirs, calibration, offline targets.

Used by `plugin.build`: Platt calibration of the teachers on validation
(CrossDistil) and, in offline mode, the teachers' targets computed once over
the training rows (cached in the first teacher's workdir, "next to the data"
the teacher was trained on) as columns "teacher/<task>".

Running a function over a split is the trainer's business (devices, mesh):
these functions take it as `predict(per_device_fn, params, columns)` ->
{name: np.ndarray[N, ...]}, with `per_device_fn(params, batch)` a
per-device function and `params` host arrays.
"""
import hashlib
import json
from typing import Callable, Dict, Tuple

import jax
import numpy as np
from absl import logging

from mtkd_jax import paths
from mtkd_jax.distill import terms

# predict(per_device_fn, host params, columns) -> {name: np.ndarray[N, ...]}
Predict = Callable[[Callable, object, dict], Dict[str, np.ndarray]]


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


def calibrate(teacher, columns, spec, predict: Predict):
  """The teacher with Platt (a, b) per binary task, fitted on `columns`
  (the validation split)."""
  dspec = terms.DistillSpec(
      teacher_models=(teacher.model,), calibration=({},),
      tasks=tuple(t for t in spec.tasks if t.kind == "binary"),
      ensemble_weights={})
  preds = predict(_targets_fn(dspec), (teacher.params,), columns)
  calibration = dict(teacher.calibration)
  for task in spec.tasks:
    if task.kind == "binary" and task.name in preds:
      calibration[task.name] = fit_platt(preds[task.name],
                                         columns[f"labels/{task.name}"],
                                         columns["weights"])
  logging.info("Platt calibration of teacher %s: %s", teacher.workdir,
               calibration)
  return teacher._replace(calibration=calibration)


def _targets_fn(dspec):
  """Per-device fn(teacher params, batch) -> the teachers' targets."""
  def per_device(teacher_params, batch):
    return terms.teacher_targets(teacher_params, batch, dspec)
  return per_device


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


def offline_targets(dspec, teachers, columns, predict: Predict):
  """{"teacher/<name>": np.ndarray[N, ...]} over `columns`, cached on disk."""
  n = len(columns["weights"])
  path = (paths.path(teachers[0].workdir) / "distill_targets" /
          f"train_{_cache_key(dspec, teachers, n)}.npz")
  if path.exists():
    logging.info("Offline teacher targets from %s.", path)
    return paths.load_npz(path)
  preds = predict(_targets_fn(dspec), tuple(t.params for t in teachers),
                  columns)
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
