"""Statistics of a sweep's results: aggregation over seeds, Δm, paired tests.

  * direction(metric): "max" for auc / gauc / ndcg / recall / hr / mrr,
    "min" for logloss / rmse / mae / mse / loss, None otherwise (e.g. pcoc);
  * aggregate: mean and sample std (ddof=1; NaN for n=1) over seeds;
  * delta_m: the LibMTL multi-task gain over single-task learning (Lin &
    Zhang 2023, after Maninis et al. 2019),
      Δm = (1/T) Σ_t (-1)^{s_t} (M_t - M_t^STL) / M_t^STL × 100%,
    s_t = 1 if lower is better for task t's primary metric, else 0;
  * paired_tests: scipy.stats.ttest_rel and scipy.stats.wilcoxon of a
    variant against a baseline, paired by seed; None ("n/a") with fewer than
    2 pairs, for the t-test when the differences are all equal (zero
    variance), for Wilcoxon when they are all zero (both up to 1e-12 of the
    values' magnitude, i.e. float rounding);
  * adjust_pvalues: Holm (default) or Benjamini-Hochberg adjustment of the
    p-values of the rows compared with a baseline, one family per metric and
    test;
  * wilcoxon_min_pvalue / min_adjusted_pvalue: the smallest p a test can
    give at n paired seeds, so a report can say when significance at ALPHA
    is out of reach whatever the data.
"""
import dataclasses
import math
import re
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats as sp_stats

HIGHER = ("auc", "gauc", "ndcg", "recall", "hr", "mrr")
LOWER = ("logloss", "rmse", "mae", "mse", "loss")
PRIMARY = ("auc", "rmse", "gauc", "logloss", "mae")  # a task's first present
NON_TASK = ("mean", "gates")
SPLITS = ("test", "validation", "model")  # model: results.json "model"
ALPHA = 0.05  # the significance level the reports' notes refer to
CORRECTIONS = ("holm", "bh", "none")  # multiple-comparison adjustments


def direction(metric: str) -> Optional[str]:
  """'max' / 'min' / None from the metric's last path component."""
  tokens = [t for t in re.split(r"[^a-z]+", metric.lower().split("/")[-1]) if t]
  if any(t in HIGHER for t in tokens):
    return "max"
  if any(t in LOWER for t in tokens):
    return "min"
  return None


def split_metric(name: str):
  """'test/y1/rmse' -> ('test', 'y1/rmse'); 'y1/rmse' -> ('test', ...)."""
  head, _, rest = name.partition("/")
  if head in SPLITS and rest:
    return head, rest
  return "test", name


def value(record: Mapping, metric: str) -> Optional[float]:
  split, key = split_metric(metric)
  v = record.get(split, {}).get(key)
  if v is None or isinstance(v, str):
    return None
  return float(v)


def task_primary_metrics(records: Sequence[Mapping]) -> Dict[str, str]:
  """task -> its primary metric ('y1' -> 'y1/rmse'), from the test keys."""
  keys = set()
  for r in records:
    keys |= set(r.get("test", {}))
  tasks = sorted({k.split("/")[0] for k in keys if "/" in k
                  and k.split("/")[0] not in NON_TASK})
  out = {}
  for task in tasks:
    for metric in PRIMARY:
      if f"{task}/{metric}" in keys:
        out[task] = f"{task}/{metric}"
        break
  return out


@dataclasses.dataclass
class Cell:
  """One variant's values of one metric over its seeds."""
  values: Dict[int, float]  # seed -> value

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float:
    return float(np.mean(list(self.values.values()))) if self.values else math.nan

  @property
  def std(self) -> float:
    if self.n < 2:
      return math.nan
    return float(np.std(list(self.values.values()), ddof=1))


def cell(records: Sequence[Mapping], metric: str) -> Cell:
  values = {}
  for r in records:
    v = value(r, metric)
    if v is not None and math.isfinite(v):
      values[int(r["seed"])] = v
  return Cell(values)


def best_variants(cells: Mapping[str, Cell], metric: str) -> List[str]:
  """The variants with the best mean (ties: all); [] without a direction."""
  mode = direction(metric)
  means = {k: c.mean for k, c in cells.items() if c.n and math.isfinite(c.mean)}
  if mode is None or not means:
    return []
  best = max(means.values()) if mode == "max" else min(means.values())
  return [k for k, m in means.items() if m == best]


@dataclasses.dataclass
class PairedTest:
  n: int
  t_pvalue: Optional[float]
  wilcoxon_pvalue: Optional[float]
  mean_diff: Optional[float]
  # After the multiple-comparison adjustment across the rows of one metric
  # (set by the report; None where the raw p-value is None).
  t_adjusted: Optional[float] = None
  wilcoxon_adjusted: Optional[float] = None


def paired_tests(variant: Cell, baseline: Cell) -> PairedTest:
  """t-test and Wilcoxon signed-rank of variant vs baseline over shared seeds."""
  seeds = sorted(set(variant.values) & set(baseline.values))
  a = np.array([variant.values[s] for s in seeds])
  b = np.array([baseline.values[s] for s in seeds])
  n = len(seeds)
  if n < 2:
    return PairedTest(n, None, None, float(np.mean(a - b)) if n else None)
  diff = a - b
  # Equal up to float rounding of the values counts as equal.
  tol = 1e-12 * max(float(np.max(np.abs(np.concatenate([a, b])))), 1e-300)
  t_p = None
  if np.ptp(diff) > tol:
    t_p = float(sp_stats.ttest_rel(a, b).pvalue)
    t_p = t_p if math.isfinite(t_p) else None
  w_p = None
  if np.any(np.abs(diff) > tol):
    try:
      w_p = float(sp_stats.wilcoxon(a, b).pvalue)
      w_p = w_p if math.isfinite(w_p) else None
    except ValueError:
      w_p = None
  return PairedTest(n, t_p, w_p, float(np.mean(diff)))


def holm(pvalues: Sequence[float]) -> List[float]:
  """Holm's step-down adjusted p-values (Holm 1979), in the input order.

  With p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1)
  p_(j)). Rejecting adj <= alpha controls the family-wise error rate at
  alpha under any dependence between the tests.
  """
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  out = [0.0] * m
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * pvalues[i]))
    out[i] = running
  return out


def benjamini_hochberg(pvalues: Sequence[float]) -> List[float]:
  """Benjamini-Hochberg adjusted p-values (1995), in the input order.

  With p_(1) <= ... <= p_(m): adj_(i) = min_{j >= i} min(1, m p_(j) / j).
  Rejecting adj <= q controls the false discovery rate at q (independent or
  positively dependent tests).
  """
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  out = [0.0] * m
  running = 1.0
  for rank in range(m - 1, -1, -1):
    i = order[rank]
    running = min(running, m * pvalues[i] / (rank + 1))
    out[i] = running
  return out


def adjust_pvalues(pvalues: Mapping[str, Optional[float]], method: str
                   ) -> Dict[str, Optional[float]]:
  """{row: p} -> {row: adjusted p} over the rows whose p is not None.

  Args:
    pvalues: one test's p-values of the rows compared with a baseline; None
      (no test possible) is left out of the family and stays None.
    method: "holm", "bh" (Benjamini-Hochberg) or "none".
  """
  if method not in CORRECTIONS:
    raise ValueError(f"Unknown p-value correction {method!r}; valid: "
                     f"{', '.join(CORRECTIONS)}.")
  rows = [k for k, p in pvalues.items() if p is not None]
  raw = [pvalues[k] for k in rows]
  adjusted = {"holm": holm, "bh": benjamini_hochberg,
              "none": list}[method](raw)
  out = {k: None for k in pvalues}
  out.update(zip(rows, adjusted))
  return out


def wilcoxon_min_pvalue(n: int) -> float:
  """The smallest two-sided p of the exact Wilcoxon signed-rank test.

  At n non-zero, untied paired differences the statistic's null
  distribution puts 1/2^n on "all differences of one sign" at each end, so
  p >= 2/2^n: 0.25 at n = 3, 0.0625 at n = 5, 0.03125 at n = 6.
  """
  return min(1.0, 2.0 ** (1 - n)) if n >= 1 else 1.0


def min_adjusted_pvalue(p_min: float, m: int, method: str) -> float:
  """The smallest adjusted p of a family of m tests each >= p_min.

  Holm: m p_min (its first step); Benjamini-Hochberg: p_min (all m at
  p_min); none: p_min.
  """
  return min(1.0, m * p_min) if method == "holm" else p_min


def delta_m(variant_means: Mapping[str, float],
            stl_means: Mapping[str, float]) -> Optional[float]:
  """Δm in percent over the metrics of `stl_means` ({metric: mean}).

  Args:
    variant_means: the variant's mean of each task's primary metric.
    stl_means: the single-task reference's means (same keys).
  Returns:
    None when a metric is missing, non-finite, zero in the reference, or has
    no direction.
  """
  if not stl_means:
    return None
  terms = []
  for metric, ref in stl_means.items():
    m = variant_means.get(metric)
    mode = direction(metric)
    if (m is None or mode is None or not math.isfinite(m) or
        not math.isfinite(ref) or ref == 0):
      return None
    sign = -1.0 if mode == "min" else 1.0
    terms.append(sign * (m - ref) / ref)
  return 100.0 * float(np.mean(terms))


def gap_closed(teacher: Cell, student: Cell, distilled: Cell
               ) -> Dict[str, Optional[float]]:
  """The share of the teacher-student gap that distillation closes.

  share = (M_distilled - M_student) / (M_teacher - M_student) x 100%, from
  the means over seeds ("of_means"); also per seed over the seeds all three
  have ("per_seed_mean", "per_seed_std", "n"). 100% = the distilled student
  matches the teacher; 0% = no better than the student alone; None when the
  gap is 0.
  """
  def share(t, s, d):
    return None if t == s else 100.0 * (d - s) / (t - s)
  out = {"of_means": None, "per_seed_mean": None, "per_seed_std": None, "n": 0}
  if teacher.n and student.n and distilled.n:
    out["of_means"] = share(teacher.mean, student.mean, distilled.mean)
  t, s, d = (c.values for c in (teacher, student, distilled))
  common = sorted(set(t) & set(s) & set(d))
  shares = [x for x in (share(t[k], s[k], d[k]) for k in common) if x is not None]
  if shares:
    out["n"] = len(shares)
    out["per_seed_mean"] = float(np.mean(shares))
    out["per_seed_std"] = float(np.std(shares, ddof=1)) if len(shares) > 1 else None
  return out

