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


RETRIEVAL_KS = (10, 50)


def retrieval_task_metrics(spec: specs_lib.DatasetSpec,
                           task: specs_lib.TaskSpec, columns: dict,
                           predictions: Dict[str, np.ndarray],
                           extras: Optional[dict] = None) -> Dict[str, float]:
  """Full-catalogue Recall/HR/NDCG@K and MRR of a retrieval task.

  `predictions["outputs/<task>"]` holds float[N, I]: each row's scores over
  the whole item catalogue (the two-tower model's eval output). Rows with a
  positive label (`labels/<task>` > 0) and weight > 0 are ranked; the target
  is the row's `task.item_field` id. With `extras["seen/<task>"]`, bool[U, I]
  (the items each user interacted with before this split), those items are
  excluded from the user's ranking (the target never is).

  Returns:
    {"<task>/recall_at_K", "<task>/hr_at_K", "<task>/ndcg_at_K", "<task>/mrr",
    "<task>/mean_rank"} for K in RETRIEVAL_KS.
  """
  scores = predictions[f"outputs/{task.name}"]
  field = [f.name for f in spec.sparse].index(task.item_field)
  targets = np.asarray(columns["sparse"])[:, field]
  weights = columns["weights"] * (columns[f"labels/{task.name}"] > 0)
  seen = (extras or {}).get(f"seen/{task.name}")
  exclude = None
  if seen is not None:
    exclude = np.asarray(seen)[np.asarray(columns["user_id"])]
    exclude[np.arange(len(targets)), targets] = False
  values = metrics_lib.retrieval_metrics(scores, targets, RETRIEVAL_KS,
                                         exclude_mask=exclude, weights=weights)
  return {f"{task.name}/{k}": v for k, v in values.items()}


def split_metrics(spec: specs_lib.DatasetSpec, columns: dict,
                  predictions: Dict[str, np.ndarray],
                  extras: Optional[dict] = None) -> Dict[str, float]:
  """`{"<task>/<metric>": value}` over one split.

  Binary tasks: auc, logloss, pcoc (and gauc with user ids); regression
  tasks: rmse, mae; multiclass tasks: accuracy, cross_entropy, macro_auc;
  retrieval tasks: `retrieval_task_metrics`. With
  `extras["bayes_prob/<task>"]` (synthetic data) also
  `<task>/bayes_auc`, the AUC of the Bayes-optimal predictor on these rows.
  With several tasks of a kind: `mean/auc`, `mean/rmse` over them (a single
  number to select checkpoints on). With gates: `gates/<task>/expert_<k>`,
  the mean gate weight per expert. With ESMM's "cvr_logits": `cvr/auc_clicked`
  and `cvr/logloss_clicked`, pCVR scored against conversion on the clicked
  rows only (the ESMM paper's CVR evaluation; tasks in order click, ctcvr).
  """
  weights = columns["weights"]
  user_ids = columns.get("user_id") if spec.has_user_id else None
  result = {}
  for task in spec.tasks:
    labels = columns[f"labels/{task.name}"]
    if task.kind == "retrieval":
      result.update(retrieval_task_metrics(spec, task, columns, predictions,
                                           extras))
      continue
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
  if "cvr_logits" in predictions:
    click, ctcvr = (columns[f"labels/{t}"] for t in spec.task_names[:2])
    clicked = weights * (click > 0)
    values = metrics_lib.compute_task_metrics(
        "binary", ctcvr, predictions["cvr_logits"], weights=clicked)
    result["cvr/auc_clicked"] = values["auc"]
    result["cvr/logloss_clicked"] = values["logloss"]
  if "gates" in predictions:
    gates = predictions["gates"]  # [N, T, E]
    w = weights / max(weights.sum(), 1e-12)
    mean = np.einsum("n,nte->te", w, gates)
    for t, task in enumerate(spec.tasks):
      for e in range(mean.shape[1]):
        result[f"gates/{task.name}/expert_{e}"] = float(mean[t, e])
  return result
