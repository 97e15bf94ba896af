"""Evaluation metrics over a whole split, computed on the host with numpy.

Predictions are accumulated over all eval batches and passed here as flat
arrays of N examples. Every function takes an optional `weights` array
(float[N], default all ones): rows with weight 0 are padding and are dropped
before anything else, so they never affect a result; positive weights act as
example weights (a weight of 2 counts like the row appearing twice).
Negative or non-finite weights raise ValueError.

All functions return Python floats (or a dict of them). A metric that is
undefined on the given data (no examples, one class only for AUC, zero total
weight, ...) is `nan` rather than an exception, so one degenerate split does
not stop a training run.
"""
from typing import Dict, Optional, Tuple

import numpy as np

from mtkd_jax.data.specs import TASK_KINDS

__all__ = [
    "auc", "gauc", "logloss", "logloss_from_logits", "rmse", "mae",
    "calibration", "multiclass_metrics", "retrieval_metrics",
    "compute_task_metrics", "expected_calibration_error",
]


def _keep_rows(weights: Optional[np.ndarray], n: int,
               shape: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
  """Validates `weights` and returns (mask of non-padding rows, their weights).

  Args:
    weights: float[N] or None (all ones).
    n: number of rows N.
    shape: shape the other inputs share; `weights` must have it too.

  Returns:
    keep: bool[N], True where the weight is > 0.
    w: float64[M], the positive weights, M = keep.sum().
  """
  if weights is None:
    return np.ones(n, dtype=bool), np.ones(n, dtype=np.float64)
  weights = np.asarray(weights)
  if weights.shape != shape:
    raise ValueError(f"weights has shape {weights.shape}, expected {shape}.")
  w = weights.reshape(-1).astype(np.float64)
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError("weights must be finite and >= 0 (0 marks padding).")
  keep = w > 0
  return keep, w[keep]


def _prepare(*arrays, weights=None, raw=()):
  """Flattens same-shape arrays and drops weight-0 rows.

  Args:
    *arrays: arrays of a common shape (typically [N]); they are flattened.
    weights: float array of that shape, or None.
    raw: positions in `arrays` to keep in their own dtype (e.g. int64 ids,
      which float64 could not all represent).

  Returns:
    A tuple (*filtered_arrays, w) of 1-D arrays of length M (non-padding
    rows); inputs become float64 except those named in `raw`.
  """
  arrays = [np.asarray(a) for a in arrays]
  shape = arrays[0].shape
  for a in arrays[1:]:
    if a.shape != shape:
      raise ValueError(
          f"Inputs must have the same shape; got {[x.shape for x in arrays]}.")
  n = int(np.prod(shape, dtype=np.int64))
  keep, w = _keep_rows(weights, n, shape)
  out = []
  for i, a in enumerate(arrays):
    a = a.reshape(-1)
    if i not in raw:
      a = a.astype(np.float64)
    out.append(a[keep])
  return (*out, w)


def _check_binary(labels: np.ndarray) -> None:
  """Raises ValueError unless every label is 0 or 1."""
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("AUC / GAUC labels must be 0 or 1 (on non-padding rows).")


def _segment_mann_whitney(
    scores: np.ndarray, labels: np.ndarray, w: np.ndarray,
    seg_start: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Weighted Mann-Whitney U per segment, from data sorted by (segment, score).

  Within each segment, with P / N the positive / negative rows,
    U = sum_{i in P, j in N} w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j]).
  Rows are grouped into runs of equal score ("tie groups") inside a segment;
  a tie group g with positive weight p_g and negative weight n_g contributes
  p_g * (negative weight below g in its segment + 0.5 n_g). Cost O(M).

  Args:
    scores: float[M], ascending within each segment.
    labels: float[M] in {0, 1}.
    w: float[M] positive example weights.
    seg_start: bool[M], True at the first row of each segment (row 0 must be).

  Returns:
    u: float64[S] the statistic U of each of the S segments.
    w_pos: float64[S] total positive weight per segment.
    w_neg: float64[S] total negative weight per segment.
  """
  tie_start = seg_start.copy()
  tie_start[1:] |= scores[1:] != scores[:-1]
  starts = np.flatnonzero(tie_start)                    # [G]
  pos_g = np.add.reduceat(w * labels, starts)           # [G]
  neg_g = np.add.reduceat(w * (1.0 - labels), starts)   # [G]
  seg_of_group = np.cumsum(seg_start)[starts] - 1       # [G]
  num_seg = int(seg_of_group[-1]) + 1
  # Negative weight strictly below each group, counted from its segment start.
  neg_before = np.cumsum(neg_g) - neg_g                 # [G], global
  first_group = np.flatnonzero(seg_start[starts])       # [S]
  neg_below = neg_before - neg_before[first_group][seg_of_group]
  u_g = pos_g * (neg_below + 0.5 * neg_g)
  u = np.bincount(seg_of_group, weights=u_g, minlength=num_seg)
  w_pos = np.bincount(seg_of_group, weights=pos_g, minlength=num_seg)
  w_neg = np.bincount(seg_of_group, weights=neg_g, minlength=num_seg)
  return u, w_pos, w_neg


def auc(labels, scores, weights=None) -> float:
  """Exact area under the ROC curve, with tied scores counted 1/2.

  AUC is the Mann-Whitney statistic normalised to [0, 1] (Mann & Whitney,
  1947; Hanley & McNeil, 1982):
    AUC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j])
          / (W_pos * W_neg),
  with W_pos / W_neg the total positive / negative weight. With unit weights
  this is U / (n_pos n_neg), the average-rank formula; with weights it equals
  the trapezoidal area under the weighted ROC curve (sklearn's
  `roc_auc_score(..., sample_weight=w)`). Computed by one sort and cumulative
  sums over tie groups: O(N log N).

  Args:
    labels: [N] in {0, 1} (padding rows may hold anything).
    scores: [N] real scores (logits or probabilities; only order matters).
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.

  Returns:
    The AUC, or nan if either class is absent or any score is nan.
  """
  labels, scores, w = _prepare(labels, scores, weights=weights)
  if labels.size == 0 or np.isnan(scores).any():
    return float("nan")
  _check_binary(labels)
  order = np.argsort(scores)
  seg_start = np.zeros(labels.size, dtype=bool)
  seg_start[0] = True
  u, w_pos, w_neg = _segment_mann_whitney(
      scores[order], labels[order], w[order], seg_start)
  if w_pos[0] <= 0 or w_neg[0] <= 0:
    return float("nan")
  return float(u[0] / (w_pos[0] * w_neg[0]))


def gauc(labels, scores, user_ids, weights=None) -> float:
  """Group AUC: per-user AUC averaged with impression weights.

  As defined for DIN (Zhou et al., "Deep Interest Network for Click-Through
  Rate Prediction", KDD 2018, eq. 8):
    GAUC = sum_u #impression_u * AUC_u / sum_u #impression_u,
  over the users u that have both a positive and a negative row (AUC_u is
  undefined for the others, which are skipped). #impression_u is the user's
  number of non-padding rows, or with weights their total weight; AUC_u is
  `auc` on the user's rows (ties count 1/2, rows weighted). Vectorised: one
  lexsort by (user, score) and segmented cumulative sums, O(N log N).

  Args:
    labels: [N] in {0, 1}.
    scores: [N] real scores.
    user_ids: [N] user keys (any sortable dtype, e.g. int32).
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.

  Returns:
    The GAUC, or nan if no user has both classes or any score is nan.
  """
  labels, scores, user_ids, w = _prepare(
      labels, scores, user_ids, weights=weights, raw=(2,))
  if labels.size == 0 or np.isnan(scores).any():
    return float("nan")
  _check_binary(labels)
  order = np.lexsort((scores, user_ids))   # last key is the primary one
  users = user_ids[order]
  seg_start = np.ones(users.size, dtype=bool)
  seg_start[1:] = users[1:] != users[:-1]
  u, w_pos, w_neg = _segment_mann_whitney(
      scores[order], labels[order], w[order], seg_start)
  valid = (w_pos > 0) & (w_neg > 0)
  if not valid.any():
    return float("nan")
  impressions = (w_pos + w_neg)[valid]
  user_auc = u[valid] / (w_pos[valid] * w_neg[valid])
  return float(np.sum(impressions * user_auc) / np.sum(impressions))


def _weighted_mean(values: np.ndarray, w: np.ndarray) -> float:
  """sum(w * values) / sum(w), or nan when there are no rows."""
  total = np.sum(w)
  if values.size == 0 or total <= 0:
    return float("nan")
  return float(np.sum(w * values) / total)


def logloss(labels, probs, weights=None, eps: float = 1e-7) -> float:
  """Weighted mean binary cross-entropy of probabilities.

    logloss = sum_i w_i * -(y_i log p_i + (1 - y_i) log(1 - p_i)) / sum_i w_i,
  with p clipped to [eps, 1 - eps] so that a confident mistake costs at most
  -log(eps). Labels may be soft (in [0, 1]).

  Args:
    labels: [N] in [0, 1].
    probs: [N] predicted probabilities of the positive class.
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.
    eps: clipping margin.

  Returns:
    The weighted mean loss (nan if there are no non-padding rows).
  """
  labels, probs, w = _prepare(labels, probs, weights=weights)
  p = np.clip(probs, eps, 1.0 - eps)
  ce = -(labels * np.log(p) + (1.0 - labels) * np.log1p(-p))
  return _weighted_mean(ce, w)


def logloss_from_logits(labels, logits, weights=None) -> float:
  """Weighted mean binary cross-entropy of logits, numerically stable.

  With p = sigmoid(z), -(y log p + (1 - y) log(1 - p)) = softplus(z) - y z,
  evaluated as max(z, 0) - y z + log1p(exp(-|z|)), which is exact (no
  clipping, no overflow) for any finite logit, e.g. z = 100, y = 0 gives 100.

  Args:
    labels: [N] in [0, 1].
    logits: [N] real logits.
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.

  Returns:
    The weighted mean loss (nan if there are no non-padding rows).
  """
  labels, z, w = _prepare(labels, logits, weights=weights)
  ce = np.maximum(z, 0.0) - labels * z + np.log1p(np.exp(-np.abs(z)))
  return _weighted_mean(ce, w)


def rmse(targets, preds, weights=None) -> float:
  """Root of the weighted mean squared error: sqrt(sum w (t-p)^2 / sum w).

  Args:
    targets: [N] real targets.
    preds: [N] predictions.
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.
  """
  targets, preds, w = _prepare(targets, preds, weights=weights)
  return float(np.sqrt(_weighted_mean((targets - preds) ** 2, w)))


def mae(targets, preds, weights=None) -> float:
  """Weighted mean absolute error: sum w |t - p| / sum w.

  Args:
    targets: [N] real targets.
    preds: [N] predictions.
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.
  """
  targets, preds, w = _prepare(targets, preds, weights=weights)
  return _weighted_mean(np.abs(targets - preds), w)


def calibration(labels, probs, weights=None) -> Dict[str, float]:
  """Calibration of predicted probabilities against observed labels.

  PCOC ("predicted CTR over observed CTR"; the calibration ratio of He et al.,
  "Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014):
    pcoc = (sum w p / sum w) / (sum w y / sum w);
  1 is calibrated, > 1 over-predicts, < 1 under-predicts.

  Args:
    labels: [N] in [0, 1].
    probs: [N] predicted probabilities.
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.

  Returns:
    {"pcoc", "mean_pred", "mean_label"}; pcoc is nan when the observed
    positive rate is 0 (or there are no rows).
  """
  labels, probs, w = _prepare(labels, probs, weights=weights)
  mean_pred = _weighted_mean(probs, w)
  mean_label = _weighted_mean(labels, w)
  pcoc = mean_pred / mean_label if mean_label > 0 else float("nan")
  return {"pcoc": float(pcoc), "mean_pred": mean_pred,
          "mean_label": mean_label}


def _sigmoid(z: np.ndarray) -> np.ndarray:
  """Overflow-free logistic function, exp(-softplus(-z))."""
  return np.exp(-np.logaddexp(0.0, -z))


def multiclass_metrics(labels, logits, weights=None) -> Dict[str, float]:
  """Accuracy, cross-entropy and macro one-vs-rest AUC of a multiclass task.

    accuracy = sum_i w_i [argmax_c z_ic == y_i] / sum_i w_i
    cross_entropy = sum_i w_i (logsumexp_c z_ic - z_i,y_i) / sum_i w_i
    macro_auc = mean over classes c present with both outcomes of
                auc([y == c], softmax(z)_c)   (one-vs-rest, Provost &
                Domingos 2000 use the prevalence-weighted mean; this is the
                unweighted "macro" one of sklearn's multi_class="ovr").

  Args:
    labels: [N] class ids in [0, C) (floats holding integers are fine).
    logits: [N, C] real logits.
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.

  Returns:
    {"accuracy", "cross_entropy", "macro_auc"}; nan where undefined (no
    rows; macro_auc when no class has both outcomes).
  """
  logits = np.asarray(logits, dtype=np.float64)
  labels = np.asarray(labels)
  if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
    raise ValueError(f"logits must be [N, C] with N = len(labels) = "
                     f"{labels.shape[0]}; got {list(logits.shape)}.")
  keep, w = _keep_rows(weights, labels.shape[0], labels.shape)
  z, y = logits[keep], labels[keep].astype(np.int64)
  if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
    raise ValueError(f"multiclass labels must lie in [0, {z.shape[1]}).")
  m = z.max(axis=1, keepdims=True)
  lse = (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]
  rows = np.arange(y.size)
  ce = lse - z[rows, y]
  acc = (np.argmax(z, axis=1) == y).astype(np.float64)
  probs = np.exp(z - lse[:, None])
  aucs = [auc((y == c).astype(np.float64), probs[:, c], w)
          for c in range(z.shape[1])]
  aucs = [a for a in aucs if not np.isnan(a)]
  return {"accuracy": _weighted_mean(acc, w),
          "cross_entropy": _weighted_mean(ce, w),
          "macro_auc": float(np.mean(aucs)) if aucs else float("nan")}


def retrieval_metrics(scores, targets, ks=(10, 50), exclude_mask=None,
                      weights=None) -> Dict[str, float]:
  """Full-catalogue ranking metrics of held-out items.

  Each row n scores every item of the catalogue (scores[n, i]); its target
  item t_n is ranked among the items that are not excluded (the user's
  already-seen items, `exclude_mask[n, i]`; the target itself is never
  excluded). With the rank r_n = 1 + #{i allowed: s_ni > s_nt} (ties count
  in the target's favour; optimistic, as in most toolkits),
    HR@K = Recall@K = [r_n <= K]    (one held-out item per row),
    NDCG@K = [r_n <= K] / log2(1 + r_n)   (ideal DCG is 1),
    MRR = 1 / r_n,
  each averaged over rows with weights (0 = padding, dropped). With one
  target per row Recall@K equals HR@K; both are reported under their names.

  Args:
    scores: float[N, I], higher = better.
    targets: int[N], item ids in [0, I).
    ks: the cut-offs K.
    exclude_mask: optional bool[N, I], True for items to leave out of row n's
      ranking.
    weights: optional float[N] >= 0.

  Returns:
    {"recall_at_K", "hr_at_K", "ndcg_at_K" for each K, "mrr", "mean_rank"}
    (TensorBoard-safe names of Recall@K, HR@K, NDCG@K); nan
    without rows.
  """
  scores = np.asarray(scores, dtype=np.float64)
  targets = np.asarray(targets).astype(np.int64)
  n, num_items = scores.shape
  if targets.shape != (n,):
    raise ValueError(f"targets must be [{n}], got {list(targets.shape)}.")
  if n and (targets.min() < 0 or targets.max() >= num_items):
    raise ValueError(f"targets must lie in [0, {num_items}).")
  keep, w = _keep_rows(weights, n, (n,))
  scores, targets = scores[keep], targets[keep]
  target_scores = scores[np.arange(targets.size), targets]
  better = scores > target_scores[:, None]
  if exclude_mask is not None:
    exclude_mask = np.asarray(exclude_mask, dtype=bool)
    if exclude_mask.shape != (n, num_items):
      raise ValueError(f"exclude_mask must be [{n}, {num_items}], got "
                       f"{list(exclude_mask.shape)}.")
    better &= ~exclude_mask[keep]
  rank = 1.0 + better.sum(axis=1)
  out = {}
  for k in ks:
    hit = (rank <= k).astype(np.float64)
    out[f"recall_at_{k}"] = _weighted_mean(hit, w)
    out[f"hr_at_{k}"] = out[f"recall_at_{k}"]
    out[f"ndcg_at_{k}"] = _weighted_mean(hit / np.log2(1.0 + rank), w)
  out["mrr"] = _weighted_mean(1.0 / rank, w)
  out["mean_rank"] = _weighted_mean(rank, w)
  return out


def compute_task_metrics(kind: str, labels, outputs, weights=None,
                         user_ids=None) -> Dict[str, float]:
  """The standard metrics of one task over a split.

  Args:
    kind: the task kind: "binary", "regression" or "multiclass" ("retrieval"
      needs the catalogue: `retrieval_metrics`, wired in
      `mtkd_jax.train.evaluate.split_metrics`).
    labels: [N] labels of the task.
    outputs: [N] model outputs: logits for "binary", predictions for
      "regression"; [N, C] logits for "multiclass".
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.
    user_ids: optional [N] user keys; adds "gauc" for binary tasks.

  Returns:
    "binary": {"auc", "logloss" (from logits), "pcoc", "ece"} plus "gauc" when
    `user_ids` is given; "regression": {"rmse", "mae"}; "multiclass":
    `multiclass_metrics`.

  Raises:
    ValueError: for an unknown `kind`.
  """
  if kind == "binary":
    logits = np.asarray(outputs, dtype=np.float64)
    out = {
        "auc": auc(labels, logits, weights),
        "logloss": logloss_from_logits(labels, logits, weights),
        "pcoc": calibration(labels, _sigmoid(logits), weights)["pcoc"],
        "ece": expected_calibration_error(labels, _sigmoid(logits), weights),
    }
    if user_ids is not None:
      out["gauc"] = gauc(labels, logits, user_ids, weights)
    return out
  if kind == "regression":
    return {"rmse": rmse(labels, outputs, weights),
            "mae": mae(labels, outputs, weights)}
  if kind == "multiclass":
    return multiclass_metrics(labels, outputs, weights)
  raise ValueError(f"Unknown task kind {kind!r}; valid kinds: "
                   f"{', '.join(TASK_KINDS)}.")


def expected_calibration_error(labels, probs, weights=None,
                               num_bins: int = 15) -> float:
  """Expected calibration error of binary probabilities, equal-width bins.

  The reliability-diagram ECE (Naeini, Cooper & Hauskrecht, AAAI 2015;
  Guo et al., ICML 2017) for the positive-class probability of a binary
  task, with example weights. [0, 1] is cut into `num_bins` equal bins
  [m/M, (m+1)/M) (the last one closed, so p = 1 falls in it); with W_m, y_m
  and p_m the total weight, weighted mean label and weighted mean
  probability of bin m and W the total weight,
    ECE = sum_m (W_m / W) |y_m - p_m|
        = sum_m |sum_{i in bin m} w_i (y_i - p_i)| / W.
  Empty bins contribute 0. Labels may be soft (in [0, 1]).

  Args:
    labels: [N] in [0, 1].
    probs: [N] predicted probabilities in [0, 1].
    weights: optional [N] >= 0; 0 marks padding rows, which are ignored.
    num_bins: M >= 1.

  Returns:
    The ECE in [0, 1]; nan without non-padding rows or with a nan
    probability.

  Raises:
    ValueError: if num_bins < 1 or a probability lies outside [0, 1].
  """
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  labels, probs, w = _prepare(labels, probs, weights=weights)
  if probs.size == 0 or np.isnan(probs).any():
    return float("nan")
  if np.any((probs < 0.0) | (probs > 1.0)):
    raise ValueError("ECE probabilities must lie in [0, 1].")
  bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
  gap = np.bincount(bins, weights=w * (labels - probs), minlength=num_bins)
  return float(np.sum(np.abs(gap)) / np.sum(w))
