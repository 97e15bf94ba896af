"""PNG figures of a sweep (matplotlib, Agg backend).

  * metric_vs_<key>.png: each metric's mean ± std (error bars) over seeds
    against a numeric swept key (e.g. data.correlation), one line per
    combination of the other overrides;
  * curves.png: training loss and the validation select metric against the
    step, mean ± std band over seeds, one line per variant; with a numeric
    swept key, one column of panels per value of it.
"""
import json
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib
import numpy as np

from mtkd_jax import paths
from mtkd_jax.ablation import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

SEED = "seed"


def _save(fig, path: str) -> None:
  """Saves `fig` as a PNG at `path` (any `paths` scheme) and closes it."""
  with paths.path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_swept_keys(variants: Sequence) -> List[str]:
  """Override keys (not seed) with numeric values only, >= 2 distinct."""
  keys = []
  for v in variants:
    for k in v.overrides:
      if k not in keys and k != SEED:
        keys.append(k)
  out = []
  for k in keys:
    values = [v.overrides.get(k) for v in variants]
    if all(_is_number(x) for x in values) and len(set(values)) > 1:
      out.append(k)
  return out


def _others(overrides: Mapping, key: str) -> str:
  rest = [f"{k.split('.')[-1]}={_fmt(v)}" for k, v in overrides.items()
          if k not in (key, SEED)]
  return ", ".join(rest) or "base"


def _fmt(v) -> str:
  if isinstance(v, (list, tuple)):
    return "(" + ", ".join(map(str, v)) + ")"
  return str(v)


def _colors(labels: Sequence[str]) -> Dict[str, tuple]:
  cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
  return {l: cmap(i % cmap.N) for i, l in enumerate(labels)}


def plot_metric_vs(key: str, variants: Sequence, metrics: Sequence[str],
                   path: str) -> str:
  """One panel per metric: mean ± std against `key`."""
  lines: Dict[str, List[Tuple[float, float, float]]] = {}
  for v in variants:
    label = _others(v.overrides, key)
    lines.setdefault(label, [])
  colors = _colors(list(lines))
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8),
                           squeeze=False)
  xs = sorted({float(v.overrides[key]) for v in variants})
  span = (xs[-1] - xs[0]) or 1.0
  for ax, metric in zip(axes[0], metrics):
    for j, label in enumerate(lines):
      dodge = (j - (len(lines) - 1) / 2) * 0.01 * span  # error bars apart
      pts = []
      for v in variants:
        if _others(v.overrides, key) != label:
          continue
        c = stats.cell(v.records, metric)
        if c.n:
          pts.append((float(v.overrides[key]), c.mean,
                      0.0 if math.isnan(c.std) else c.std))
      if not pts:
        continue
      pts.sort()
      x, y, e = map(np.array, zip(*pts))
      x = x + dodge
      ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label,
                  color=colors[label])
    mode = stats.direction(metric)
    hint = {"max": " (higher is better)", "min": " (lower is better)"}.get(
        mode, "")
    ax.set_title(metric + hint, fontsize=10)
    ax.set_xlabel(key)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  return path


def read_curves(sweep_dir: str, record: Mapping
                ) -> Tuple[Dict[int, float], Dict[int, float]]:
  """({step: train loss}, {step: validation select metric}) of one run."""
  path = paths.path(sweep_dir) / record.get("workdir", record["name"]) / (
      "metrics.jsonl")
  train, val = {}, {}
  if not path.exists():
    return train, val
  select = record.get("select_metric")
  for line in path.read_text().splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    if r.get("split") == "train" and _is_number(r.get("loss")):
      train[int(r["step"])] = float(r["loss"])
    elif r.get("split") == "validation" and _is_number(r.get(select)):
      val[int(r["step"])] = float(r[select])
  return train, val


def _band(per_seed: Sequence[Dict[int, float]]):
  per_seed = [c for c in per_seed if c]
  if not per_seed:
    return None
  steps = sorted(set.intersection(*(set(c) for c in per_seed)))
  if not steps:
    return None
  values = np.array([[c[s] for s in steps] for c in per_seed])
  mean = values.mean(axis=0)
  std = (values.std(axis=0, ddof=1) if len(per_seed) > 1
         else np.zeros_like(mean))
  return np.array(steps), mean, std


def plot_curves(sweep_dir: str, variants: Sequence, path: str,
                facet_key: Optional[str] = None) -> Optional[str]:
  """Train loss and validation metric vs step; None if no run has curves."""
  facets = [None]
  if facet_key:
    facets = sorted({v.overrides[facet_key] for v in variants})
  labels = list(dict.fromkeys(_others(v.overrides, facet_key)
                              for v in variants))
  colors = _colors(labels)
  fig, axes = plt.subplots(2, len(facets), figsize=(4.8 * len(facets), 7.2),
                           squeeze=False, sharex="col")
  select = next((r.get("select_metric") for v in variants for r in v.records
                 if r.get("select_metric")), "validation metric")
  drew = False
  for col, facet in enumerate(facets):
    for v in variants:
      if facet_key and v.overrides.get(facet_key) != facet:
        continue
      label = _others(v.overrides, facet_key)
      curves = [read_curves(sweep_dir, r) for r in v.records]
      for row, part in enumerate((0, 1)):
        band = _band([c[part] for c in curves])
        if band is None:
          continue
        steps, mean, std = band
        ax = axes[row][col]
        ax.plot(steps, mean, color=colors[label], label=label, lw=1.4)
        ax.fill_between(steps, mean - std, mean + std, color=colors[label],
                        alpha=0.2, lw=0)
        drew = True
    title = f"{facet_key} = {facet}" if facet_key else ""
    axes[0][col].set_title(title, fontsize=10)
    axes[0][col].set_ylabel("train loss")
    axes[1][col].set_ylabel(f"validation {select}")
    axes[1][col].set_xlabel("step")
    for row in range(2):
      axes[row][col].grid(alpha=0.3)
      ys = [l.get_ydata() for l in axes[row][col].get_lines()]
      if ys and all(np.all(y > 0) for y in ys) and (
          max(y.max() for y in ys) > 5 * min(y.min() for y in ys)):
        axes[row][col].set_yscale("log")  # a loss falling over decades
  if not drew:
    plt.close(fig)
    return None
  axes[0][0].legend(fontsize=8)
  fig.suptitle("mean ± std over seeds", fontsize=10)
  fig.tight_layout()
  _save(fig, path)
  return path
