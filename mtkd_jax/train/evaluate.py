"""Whole-split evaluation: predictions gathered on the host, exact metrics.

Metrics are computed once over all rows of a split (exact AUC, GAUC,
logloss, RMSE), never averaged over per-batch values; padding rows are dropped
by their zero weight before any metric sees them.
"""
from typing import Callable, Dict, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from mtkd_jax import metrics as metrics_lib
from mtkd_jax.data import pipeline
from mtkd_jax.data import specs as specs_lib


def _to_host(tree):
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def predict(eval_fn: Callable, params, columns: dict, batch_size: int,
            put: Callable[[dict], dict]) -> Dict[str, np.ndarray]:
  """Runs `eval_fn(params, batch)` over a split; returns host arrays, real rows.

  Returns:
    {"outputs/<task>": float[N], "gates": float[N, T, E] if the model has
    them}, row i = row i of `columns`.
  """
  n = len(columns["weights"])
  chunks = []
  for batch in pipeline.prefetch(pipeline.eval_batches(columns, batch_size), put):
    chunks.append(eval_fn(params, batch))
  chunks = _to_host(chunks)
  joined = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  return {k: v[:n] for k, v in joined.items()}


def split_metrics(spec: specs_lib.DatasetSpec, columns: dict,
                  predictions: Dict[str, np.ndarray],
                  extras: Optional[dict] = None) -> Dict[str, float]:
  """`{"<task>/<metric>": value}` over one split.

  Binary tasks: auc, logloss, pcoc (and gauc with user ids); regression
  tasks: rmse, mae. With `extras["bayes_prob/<task>"]` (synthetic data) also
  `<task>/bayes_auc`, the AUC of the Bayes-optimal predictor on these rows.
  With several tasks of a kind: `mean/auc`, `mean/rmse` over them (a single
  number to select checkpoints on). With gates: `gates/<task>/expert_<k>`,
  the mean gate weight per expert.
  """
  weights = columns["weights"]
  user_ids = columns.get("user_id") if spec.has_user_id else None
  result = {}
  for task in spec.tasks:
    labels = columns[f"labels/{task.name}"]
    values = metrics_lib.compute_task_metrics(
        task.kind, labels, predictions[f"outputs/{task.name}"],
        weights=weights, user_ids=user_ids)
    result.update({f"{task.name}/{k}": v for k, v in values.items()})
    bayes = (extras or {}).get(f"bayes_prob/{task.name}")
    if bayes is not None:
      result[f"{task.name}/bayes_auc"] = metrics_lib.auc(labels, bayes, weights)
  for metric, kind in (("auc", "binary"), ("rmse", "regression")):
    values = [result[f"{t.name}/{metric}"] for t in spec.tasks if t.kind == kind]
    if len(values) > 1:
      result[f"mean/{metric}"] = float(np.mean(values))
  if "gates" in predictions:
    gates = predictions["gates"]  # [N, T, E]
    w = weights / max(weights.sum(), 1e-12)
    mean = np.einsum("n,nte->te", w, gates)
    for t, task in enumerate(spec.tasks):
      for e in range(mean.shape[1]):
        result[f"gates/{task.name}/expert_{e}"] = float(mean[t, e])
  return result
