"""Tests for mtkd_jax.metrics, against scikit-learn and hand-computed values."""
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from mtkd_jax import metrics


def _binary_data(rng, n, decimals=1):
  """Random labels and heavily tied scores (rounded to `decimals`)."""
  labels = (rng.random(n) < 0.3).astype(np.float32)
  scores = np.round(rng.random(n) + 0.3 * labels, decimals).astype(np.float32)
  return labels, scores


def _gauc_reference(labels, scores, user_ids, weights=None):
  """Straightforward per-user loop with sklearn (DIN's GAUC definition)."""
  if weights is None:
    weights = np.ones(len(labels))
  num = den = 0.0
  for u in np.unique(user_ids):
    m = (user_ids == u) & (weights > 0)
    y, s, w = labels[m], scores[m], weights[m]
    if y.min() == y.max():
      continue
    num += w.sum() * skm.roc_auc_score(y, s, sample_weight=w)
    den += w.sum()
  return num / den


# ----------------------------------------------------------------------- AUC


def test_auc_hand_computed():
  # Pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, *) two wins.
  assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75


def test_auc_ties_count_half():
  assert metrics.auc([0, 1], [0.5, 0.5]) == 0.5
  # One tie (0.5) and one win out of 2 pairs.
  assert metrics.auc([0, 0, 1], [0.5, 0.2, 0.5]) == 0.75


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_auc_matches_sklearn_with_ties(seed, decimals):
  rng = np.random.default_rng(seed)
  labels, scores = _binary_data(rng, 5000, decimals)
  got = metrics.auc(labels, scores)
  assert type(got) is float
  np.testing.assert_allclose(got, skm.roc_auc_score(labels, scores),
                             rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_weighted_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels, scores = _binary_data(rng, 5000)
  weights = rng.random(5000) * 3
  np.testing.assert_allclose(
      metrics.auc(labels, scores, weights),
      skm.roc_auc_score(labels, scores, sample_weight=weights),
      rtol=0, atol=1e-12)


def test_auc_integer_weights_equal_repeated_rows():
  rng = np.random.default_rng(3)
  labels, scores = _binary_data(rng, 500)
  counts = rng.integers(1, 4, size=500)
  np.testing.assert_allclose(
      metrics.auc(labels, scores, counts),
      metrics.auc(np.repeat(labels, counts), np.repeat(scores, counts)),
      rtol=0, atol=1e-12)


def test_auc_zero_weight_rows_ignored():
  rng = np.random.default_rng(4)
  labels, scores = _binary_data(rng, 2000)
  weights = (rng.random(2000) < 0.7).astype(np.float32)
  # Padding rows hold garbage (label 7, nan score) that must not matter.
  labels_pad = np.where(weights > 0, labels, 7.0)
  scores_pad = np.where(weights > 0, scores, np.nan)
  keep = weights > 0
  assert metrics.auc(labels_pad, scores_pad, weights) == metrics.auc(
      labels[keep], scores[keep])


def test_auc_single_class_is_nan():
  assert math.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))
  assert math.isnan(metrics.auc([0, 0], [0.1, 0.2]))
  assert math.isnan(metrics.auc([0, 1], [0.1, 0.2], weights=[1, 0]))
  assert math.isnan(metrics.auc([], []))


def test_auc_rejects_bad_inputs():
  with pytest.raises(ValueError, match="0 or 1"):
    metrics.auc([0, 0.5, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="shape"):
    metrics.auc([0, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match=">= 0"):
    metrics.auc([0, 1], [0.1, 0.2], weights=[1, -1])


def test_auc_one_million_rows_is_fast():
  rng = np.random.default_rng(5)
  labels, scores = _binary_data(rng, 1_000_000, decimals=3)
  metrics.auc(labels[:1000], scores[:1000])  # warm up
  start = time.perf_counter()
  got = metrics.auc(labels, scores)
  elapsed = time.perf_counter() - start
  assert elapsed < 2.0, elapsed
  np.testing.assert_allclose(got, skm.roc_auc_score(labels, scores),
                             rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- GAUC


def test_gauc_hand_computed():
  # User 1: pairs (0.9 > 0.5) win, (0.3 < 0.5) loss -> AUC 0.5, 3 impressions.
  # User 2: AUC 1, 2 impressions. User 3: positives only -> skipped.
  labels = [1, 0, 1, 0, 1, 1, 1]
  scores = [0.9, 0.5, 0.3, 0.2, 0.7, 0.1, 0.4]
  users = [1, 1, 1, 2, 2, 3, 3]
  assert metrics.gauc(labels, scores, users) == pytest.approx(
      (3 * 0.5 + 2 * 1.0) / 5, abs=1e-15)


@pytest.mark.parametrize("weighted", [False, True])
def test_gauc_matches_per_user_loop(weighted):
  rng = np.random.default_rng(6)
  n = 20_000
  labels, scores = _binary_data(rng, n)
  users = rng.integers(0, 500, size=n)
  # Some users with a single class, which must be skipped.
  labels[users < 20] = 1.0
  labels[(users >= 20) & (users < 40)] = 0.0
  weights = rng.random(n) * 2 if weighted else None
  np.testing.assert_allclose(
      metrics.gauc(labels, scores, users, weights),
      _gauc_reference(labels, scores, users, weights), rtol=0, atol=1e-12)


def test_gauc_zero_weight_rows_ignored():
  rng = np.random.default_rng(7)
  n = 5000
  labels, scores = _binary_data(rng, n)
  users = rng.integers(0, 100, size=n)
  weights = (rng.random(n) < 0.6).astype(np.float32)
  keep = weights > 0
  assert metrics.gauc(labels, scores, users, weights) == metrics.gauc(
      labels[keep], scores[keep], users[keep])


def test_gauc_one_user_equals_auc():
  rng = np.random.default_rng(8)
  labels, scores = _binary_data(rng, 1000)
  np.testing.assert_allclose(
      metrics.gauc(labels, scores, np.zeros(1000, np.int32)),
      metrics.auc(labels, scores), rtol=0, atol=1e-14)


def test_gauc_large_int64_user_ids_stay_distinct():
  # 2**60 and 2**60 + 1 collide in float64; they are different users.
  users = np.array([2**60, 2**60, 2**60 + 1, 2**60 + 1], dtype=np.int64)
  # As two users: AUC 1 and AUC 0 -> 0.5. Merged: 0.5 too, so break symmetry.
  labels = [1, 0, 1, 0]
  scores = [0.9, 0.1, 0.2, 0.8]
  assert metrics.gauc(labels, scores, users) == 0.5
  assert metrics.gauc(labels, scores, users, [1, 1, 3, 3]) == 0.25


def test_gauc_no_valid_user_is_nan():
  assert math.isnan(metrics.gauc([1, 0], [0.3, 0.2], [1, 2]))


def test_gauc_is_fast():
  rng = np.random.default_rng(9)
  n = 1_000_000
  labels, scores = _binary_data(rng, n, decimals=2)
  users = rng.integers(0, 100_000, size=n)
  start = time.perf_counter()
  metrics.gauc(labels, scores, users)
  assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------- logloss


def test_logloss_matches_sklearn():
  rng = np.random.default_rng(10)
  labels = (rng.random(3000) < 0.4).astype(np.float64)
  probs = rng.uniform(0.01, 0.99, 3000)
  weights = rng.random(3000)
  np.testing.assert_allclose(metrics.logloss(labels, probs),
                             skm.log_loss(labels, probs), rtol=1e-12)
  np.testing.assert_allclose(
      metrics.logloss(labels, probs, weights),
      skm.log_loss(labels, probs, sample_weight=weights), rtol=1e-12)


def test_logloss_clips_and_ignores_padding():
  assert metrics.logloss([1.0], [0.0]) == pytest.approx(-math.log(1e-7))
  assert metrics.logloss([1.0, 0.0], [0.5, 1.0], weights=[1, 0]) == (
      pytest.approx(math.log(2)))


def test_logloss_from_logits_matches_sigmoid():
  rng = np.random.default_rng(11)
  labels = (rng.random(3000) < 0.4).astype(np.float64)
  logits = rng.normal(0, 3, 3000)
  weights = rng.random(3000)
  probs = 1 / (1 + np.exp(-logits))
  np.testing.assert_allclose(
      metrics.logloss_from_logits(labels, logits, weights),
      metrics.logloss(labels, probs, weights, eps=1e-15), rtol=1e-10)


def test_logloss_from_logits_extreme_logits():
  assert metrics.logloss_from_logits([0.0], [100.0]) == pytest.approx(
      100.0, rel=1e-15)
  assert metrics.logloss_from_logits([1.0], [-100.0]) == pytest.approx(
      100.0, rel=1e-15)
  right = metrics.logloss_from_logits([1.0, 0.0], [100.0, -100.0])
  assert right == pytest.approx(math.exp(-100), rel=1e-12)  # log1p(e^-100)
  assert math.isfinite(metrics.logloss_from_logits([0, 1], [1e4, -1e4]))


# ---------------------------------------------------- regression, calibration


def test_rmse_mae_match_numpy():
  rng = np.random.default_rng(12)
  t, p, w = rng.normal(size=1000), rng.normal(size=1000), rng.random(1000)
  np.testing.assert_allclose(metrics.rmse(t, p),
                             np.sqrt(np.mean((t - p) ** 2)), rtol=1e-13)
  np.testing.assert_allclose(metrics.mae(t, p), np.mean(np.abs(t - p)),
                             rtol=1e-13)
  np.testing.assert_allclose(
      metrics.rmse(t, p, w), np.sqrt(np.average((t - p) ** 2, weights=w)),
      rtol=1e-13)
  np.testing.assert_allclose(metrics.mae(t, p, w),
                             np.average(np.abs(t - p), weights=w), rtol=1e-13)
  np.testing.assert_allclose(
      metrics.mae(t, p, w > 0.5),
      skm.mean_absolute_error(t[w > 0.5], p[w > 0.5]), rtol=1e-13)


def test_calibration():
  cal = metrics.calibration([1, 0, 0, 1, 1], [0.6, 0.2, 0.1, 0.3, 0.9],
                            weights=[1, 1, 0, 1, 0])
  assert cal["mean_label"] == pytest.approx(2 / 3)
  assert cal["mean_pred"] == pytest.approx(1.1 / 3)
  assert cal["pcoc"] == pytest.approx(1.1 / 2)
  assert math.isnan(metrics.calibration([0, 0], [0.1, 0.2])["pcoc"])


# ------------------------------------------------------ compute_task_metrics


def test_compute_task_metrics_binary():
  rng = np.random.default_rng(13)
  labels = (rng.random(1000) < 0.3).astype(np.float32)
  logits = rng.normal(size=1000).astype(np.float32)
  users = rng.integers(0, 20, size=1000)
  weights = (rng.random(1000) < 0.9).astype(np.float32)
  out = metrics.compute_task_metrics("binary", labels, logits, weights)
  assert set(out) == {"auc", "logloss", "pcoc", "ece"}
  out = metrics.compute_task_metrics("binary", labels, logits, weights, users)
  assert set(out) == {"auc", "logloss", "pcoc", "ece", "gauc"}
  assert all(type(v) is float for v in out.values())
  assert out["auc"] == metrics.auc(labels, logits, weights)
  assert out["gauc"] == metrics.gauc(labels, logits, users, weights)
  assert out["logloss"] == metrics.logloss_from_logits(labels, logits, weights)
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  assert out["pcoc"] == pytest.approx(
      metrics.calibration(labels, probs, weights)["pcoc"], rel=1e-12)


def test_compute_task_metrics_regression():
  out = metrics.compute_task_metrics("regression", [1.0, 2.0, 3.0],
                                     [1.0, 2.0, 5.0], user_ids=[0, 0, 1])
  assert out == {"rmse": pytest.approx(2 / math.sqrt(3)),
                 "mae": pytest.approx(2 / 3)}
  assert all(type(v) is float for v in out.values())


def test_compute_task_metrics_unknown_kind():
  with pytest.raises(ValueError, match="binary, regression"):
    metrics.compute_task_metrics("ordinal", [0], [0.0])


def _retrieval_reference(scores, targets, ks, exclude=None, weights=None):
  """Per-row Python loop: rank of the target among the allowed items."""
  n, num_items = scores.shape
  sums = {f"{m}_at_{k}": 0.0 for k in ks for m in ("recall", "hr", "ndcg")}
  sums["mrr"] = sums["mean_rank"] = 0.0
  total = 0.0
  for r in range(n):
    w = 1.0 if weights is None else float(weights[r])
    if w == 0:
      continue
    t = targets[r]
    rank = 1
    for i in range(num_items):
      if i == t or (exclude is not None and exclude[r, i]):
        continue
      if scores[r, i] > scores[r, t]:
        rank += 1
    for k in ks:
      hit = 1.0 if rank <= k else 0.0
      sums[f"recall_at_{k}"] += w * hit
      sums[f"hr_at_{k}"] += w * hit
      sums[f"ndcg_at_{k}"] += w * hit / math.log2(rank + 1)
    sums["mrr"] += w / rank
    sums["mean_rank"] += w * rank
    total += w
  return {k: v / total for k, v in sums.items()}


@pytest.mark.parametrize("use_exclude", [False, True])
def test_retrieval_metrics_match_brute_force(use_exclude):
  rng = np.random.default_rng(0)
  n, num_items, ks = 40, 30, (1, 5, 10)
  scores = np.round(rng.normal(size=(n, num_items)), 1)  # many ties
  targets = rng.integers(0, num_items, n)
  weights = rng.choice([0.0, 1.0, 2.0], n)
  exclude = rng.random((n, num_items)) < 0.3 if use_exclude else None
  if exclude is not None:
    exclude[np.arange(n), targets] = False
  got = metrics.retrieval_metrics(scores, targets, ks, exclude_mask=exclude,
                                  weights=weights)
  want = _retrieval_reference(scores, targets, ks, exclude, weights)
  assert set(got) == set(want)
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-12), k


def test_retrieval_metrics_hand_computed():
  scores = np.array([[0.9, 0.1, 0.5, 0.3],   # target 2 -> rank 2
                     [0.9, 0.8, 0.7, 0.6]])  # target 3 -> rank 4, or 2 with
  exclude = np.array([[False] * 4, [True, True, False, False]])  # 0, 1 out
  got = metrics.retrieval_metrics(scores, np.array([2, 3]), (1, 2),
                                  exclude_mask=exclude)
  assert got["recall_at_1"] == 0.0
  assert got["recall_at_2"] == 1.0
  assert got["ndcg_at_2"] == pytest.approx(1 / math.log2(3))
  assert got["mrr"] == pytest.approx(0.5)
  no_exclude = metrics.retrieval_metrics(scores, np.array([2, 3]), (2,))
  assert no_exclude["mrr"] == pytest.approx((0.5 + 0.25) / 2)


def test_multiclass_metrics_match_sklearn():
  rng = np.random.default_rng(1)
  n, c = 200, 4
  labels = rng.integers(0, c, n).astype(np.float32)
  logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels.astype(int)]
  weights = rng.choice([0.0, 1.0, 3.0], n)
  got = metrics.compute_task_metrics("multiclass", labels, logits, weights)
  keep = weights > 0
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(
      labels[keep], logits[keep].argmax(1), sample_weight=weights[keep]))
  assert got["cross_entropy"] == pytest.approx(skm.log_loss(
      labels[keep], probs[keep], sample_weight=weights[keep]), rel=1e-9)
  assert got["macro_auc"] == pytest.approx(skm.roc_auc_score(
      labels[keep], probs[keep], multi_class="ovr", average="macro",
      sample_weight=weights[keep]), rel=1e-9)


# ----------------------------------------------------------------------- ECE


def _ece_reference(labels, probs, weights, num_bins):
  """Per-bin loop: sum_m (W_m / W) |mean label_m - mean prob_m|."""
  total, ece = weights.sum(), 0.0
  for m in range(num_bins):
    lo, hi = m / num_bins, (m + 1) / num_bins
    inside = (probs >= lo) & ((probs < hi) if m < num_bins - 1
                              else (probs <= hi))
    inside &= weights > 0
    wm = weights[inside].sum()
    if wm == 0:
      continue
    mean_y = np.sum(weights[inside] * labels[inside]) / wm
    mean_p = np.sum(weights[inside] * probs[inside]) / wm
    ece += wm / total * abs(mean_y - mean_p)
  return ece


def test_ece_hand_computed():
  # 2 bins. Bin [0, .5): probs .1, .3, labels 0, 1 -> |.5 - .2| = .3, W 2/4.
  # Bin [.5, 1]: probs .6, 1.0, labels 1, 1 -> |1 - .8| = .2, W 2/4.
  labels = [0, 1, 1, 1]
  probs = [0.1, 0.3, 0.6, 1.0]
  got = metrics.expected_calibration_error(labels, probs, num_bins=2)
  assert type(got) is float
  assert got == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
  # One bin: |3/4 - 2/4| = .25.
  assert metrics.expected_calibration_error(
      labels, probs, num_bins=1) == pytest.approx(0.25)


def test_ece_calibrated_is_zero():
  labels = [1, 0, 0, 0, 1, 1, 1, 0]
  probs = [0.25] * 4 + [0.75] * 4
  assert metrics.expected_calibration_error(labels, probs) == pytest.approx(
      0.0, abs=1e-12)


@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_matches_per_bin_loop(num_bins):
  rng = np.random.default_rng(7)
  n = 2000
  probs = rng.random(n)
  probs[:20] = 1.0
  probs[20:40] = 0.0
  labels = (rng.random(n) < probs ** 1.5).astype(np.float64)
  weights = rng.choice([0.0, 1.0, 2.5], n)
  got = metrics.expected_calibration_error(labels, probs, weights, num_bins)
  want = _ece_reference(labels, probs, weights, num_bins)
  assert want > 0.01
  assert got == pytest.approx(want, rel=1e-10)


def test_ece_weights_padding_and_repeats():
  labels = np.array([1.0, 0.0, 1.0, 0.0])
  probs = np.array([0.9, 0.2, 0.4, 0.7])
  w = np.array([2.0, 1.0, 0.0, 1.0])
  got = metrics.expected_calibration_error(labels, probs, w, num_bins=5)
  repeated = metrics.expected_calibration_error(
      [1.0, 1.0, 0.0, 0.0], [0.9, 0.9, 0.2, 0.7], num_bins=5)
  assert got == pytest.approx(repeated)
  changed = metrics.expected_calibration_error(
      labels, [0.9, 0.2, 0.05, 0.7], w, num_bins=5)
  assert changed == got


def test_ece_degenerate_and_bad_inputs():
  assert math.isnan(metrics.expected_calibration_error([], []))
  assert math.isnan(metrics.expected_calibration_error(
      [1.0, 0.0], [0.5, 0.5], weights=[0.0, 0.0]))
  assert math.isnan(metrics.expected_calibration_error([1.0], [float("nan")]))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrics.expected_calibration_error([1.0, 0.0], [1.2, 0.5])
  with pytest.raises(ValueError, match="num_bins"):
    metrics.expected_calibration_error([1.0], [0.5], num_bins=0)
  with pytest.raises(ValueError, match="weights"):
    metrics.expected_calibration_error([1.0], [0.5], weights=[-1.0])
