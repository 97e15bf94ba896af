"""The markdown report of a sweep: tables per metric, Δm, p-values, plots.

Rows are variants (a run's overrides minus the seed); a cell is the mean ±
sample std (ddof=1) over the variant's seeds, with n. See stats.py for the
metric directions, Δm and the paired tests.

Baseline of the paired tests: a variant name, or some of its `key=value`
parts (e.g. `name=mmoe` in a sweep over correlation x model): then each row
is compared with the variant that has those parts and agrees with the row on
the others, e.g. `correlation=0.9, name=omoe` with
`correlation=0.9, name=mmoe` (see `baseline_row`).

Multiple comparisons: the p-values of one metric and one test over all rows
compared with a baseline form a family, adjusted by Holm (default) or
Benjamini-Hochberg (`correction`); the per-metric tables show raw and
adjusted p-values. Where a test cannot reach p < stats.ALPHA at the rows'
number of seeds whatever the data (two-sided Wilcoxon at small n), the table
says so and how many seeds it would need.

Single-task reference of Δm: the variants whose `model.name` override is
"single_task". A variant is compared with the single-task variant that has
the same overrides apart from `model.*` and `weighting.*` keys (preferring
one with the same `weighting.*` keys); variants without one get no Δm.
"""
import collections
import dataclasses
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from mtkd_jax import paths
from mtkd_jax.ablation import plots
from mtkd_jax.ablation import stats
from mtkd_jax.ablation import store

STL_MODEL = "single_task"
SEED = "seed"


@dataclasses.dataclass
class Variant:
  name: str
  overrides: Dict  # without the seed
  records: List[dict]
  index: int

  @property
  def is_stl(self) -> bool:
    return self.overrides.get("model.name") == STL_MODEL


def group_variants(records: Sequence[Mapping]
                   ) -> "collections.OrderedDict[str, Variant]":
  """variant name -> Variant, in sweep order (the smallest run index)."""
  groups: Dict[str, Variant] = {}
  for r in records:
    name = r.get("variant") or r["name"]
    overrides = {k: v for k, v in r.get("overrides", {}).items() if k != SEED}
    v = groups.setdefault(name, Variant(name, overrides, [], r.get("index", 0)))
    v.records.append(dict(r))
    v.index = min(v.index, r.get("index", v.index))
  ordered = sorted(groups.values(), key=lambda v: (v.index, v.name))
  return collections.OrderedDict((v.name, v) for v in ordered)


def _context(overrides, prefixes=("model.", "weighting.")):
  return {k: v for k, v in overrides.items()
          if not any(k.startswith(p) for p in prefixes)}


def stl_reference(variant: Variant, variants: Mapping[str, Variant]
                  ) -> Optional[str]:
  """The single-task variant that `variant` is compared with (or None)."""
  candidates = [v for v in variants.values() if v.is_stl and
                _context(v.overrides) == _context(variant.overrides)]
  if not candidates:
    return None
  same = [v for v in candidates if _context(v.overrides, ("model.",)) ==
          _context(variant.overrides, ("model.",))]
  return (same or candidates)[0].name


def default_metrics(records: Sequence[Mapping]) -> List[str]:
  """Each task's primary test metric, then test/mean/<that metric>."""
  primary = stats.task_primary_metrics(records)
  metrics = [f"test/{m}" for m in primary.values()]
  keys = set().union(*(r.get("test", {}) for r in records)) if records else set()
  for kind in dict.fromkeys(m.split("/")[-1] for m in primary.values()):
    if f"mean/{kind}" in keys:
      metrics.append(f"test/mean/{kind}")
  return metrics


def normalize_metric(name: str) -> str:
  split, key = stats.split_metric(name)
  return f"{split}/{key}"


def display(name: str) -> str:
  return name.replace("__", ", ")


def _fmt(x: float, digits: int = 4) -> str:
  return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _fmt_p(p: Optional[float]) -> str:
  return "n/a" if p is None else f"{p:.3g}"


def mean_std(c: stats.Cell) -> str:
  if not c.n:
    return "–"
  values = list(c.values.values())
  if all(float(v).is_integer() for v in values) and len(set(values)) == 1:
    return f"{int(values[0]):,}"  # e.g. a parameter count: the same each seed
  return f"{_fmt(c.mean)} ± {_fmt(c.std)}"


@dataclasses.dataclass
class Report:
  """Everything the markdown shows, as numbers (tests read these)."""
  variants: "collections.OrderedDict[str, Variant]"
  metrics: List[str]
  cells: Dict[str, Dict[str, stats.Cell]]  # metric -> variant -> Cell
  best: Dict[str, List[str]]  # metric -> best variants
  baseline: str
  baseline_of: Dict[str, Optional[str]]  # variant -> its baseline row
  tests: Dict[str, Dict[str, stats.PairedTest]]  # metric -> variant -> test
  delta_m: Dict[str, Optional[float]]  # variant -> Δm (%)
  stl_of: Dict[str, Optional[str]]
  primary: Dict[str, str]  # task -> primary metric (test split)
  # (teacher, student, distilled, ...) variants and, per metric with a
  # direction and per distilled variant, stats.gap_closed of them; empty
  # without `gap_closed`. gap_students: distilled -> the student it is
  # measured (and tested) against.
  gap_variants: Tuple[str, ...] = ()
  gap: Dict[str, Dict[str, Dict[str, Optional[float]]]] = dataclasses.field(
      default_factory=dict)
  correction: str = "holm"  # stats.CORRECTIONS
  gap_students: Dict[str, str] = dataclasses.field(default_factory=dict)


def parse_gap_closed(names: Sequence[str], variants: Mapping
                     ) -> Tuple[str, str, Dict[str, str]]:
  """(teacher, student, {distilled: its student}) of a `gap_closed` list.

  `names` is TEACHER, STUDENT, DISTILLED, ...; a distilled entry written
  `DISTILLED/OWN_STUDENT` is measured against OWN_STUDENT (e.g. a wider
  student distilled, against the same width trained alone) instead of
  STUDENT.
  """
  names = tuple(names)
  # "D" -> (D, STUDENT); "D/S" -> (D, S, STUDENT)
  students = dict((n.split("/", 1) + list(names[1:2]))[:2] for n in names[2:])
  used = set(names[:2]) | set(students) | set(students.values())
  if len(names) < 3 or any(n not in variants for n in used):
    raise ValueError(f"gap_closed needs three or more variants (teacher, "
                     f"student, distilled[/its student], ...); got "
                     f"{list(names)}; variants: {', '.join(variants)}.")
  return names[0], names[1], students


def own_students(gap_students: Mapping[str, str], student: Optional[str]
                 ) -> Dict[str, str]:
  """The entries of gap_students (distilled -> its student) whose student
  is not the gap's STUDENT: those measured and tested against their own."""
  return {d: s for d, s in gap_students.items() if s != student}


def build(records: Sequence[Mapping], metrics: Optional[Sequence[str]] = None,
          baseline: Optional[str] = None,
          gap_closed: Optional[Sequence[str]] = None,
          correction: str = "holm") -> Report:
  """Aggregates `records` (store lines) into a Report.

  Args:
    records: deduplicated store records.
    metrics: "split/task/metric" names (split defaults to test); default
      `default_metrics(records)`.
    baseline: the variant the paired tests compare with, or some of its
      `key=value` parts (see the module doc); default: the first variant in
      sweep order. Accepts "a=1, b=2" or "a=1__b=2".
    gap_closed: (teacher, student, distilled, ...) variant names: adds the
      share of the teacher-student gap each distilled student closes per
      metric (`gap[metric][distilled]`). A distilled entry
      "DISTILLED/OWN_STUDENT" is measured against OWN_STUDENT, and its
      paired tests compare it with OWN_STUDENT instead of the baseline.
    correction: "holm", "bh" (Benjamini-Hochberg) or "none": how each
      metric's p-values over the rows compared with a baseline are adjusted.
  """
  if correction not in stats.CORRECTIONS:
    raise ValueError(f"Unknown p-value correction {correction!r}; valid: "
                     f"{', '.join(stats.CORRECTIONS)}.")
  variants = group_variants(records)
  if not variants:
    raise ValueError("No finished runs in the results store.")
  metrics = [normalize_metric(m) for m in (metrics or default_metrics(records))]
  if baseline is not None:
    baseline = baseline.replace(", ", "__")
  else:
    baseline = next(iter(variants))
  baseline_of = {n: baseline_row(n, baseline, variants) for n in variants}
  if not any(baseline_of.values()):
    raise ValueError(f"Baseline {baseline!r} is not a variant; variants: "
                     f"{', '.join(variants)}.")
  gap_closed = tuple(gap_closed or ())
  gap_students = {}
  if gap_closed:
    teacher, student, gap_students = parse_gap_closed(gap_closed, variants)
    gap_closed = (teacher, student, *gap_students)
    # a distilled student with its own student is tested against it
    baseline_of.update(own_students(gap_students, student))
  cells = {m: {n: stats.cell(v.records, m) for n, v in variants.items()}
           for m in metrics}
  best = {m: stats.best_variants(cells[m], m) for m in metrics}
  tests = {m: {n: stats.paired_tests(c, cells[m][baseline_of[n]])
               for n, c in cells[m].items()
               if baseline_of[n] not in (None, n)}
           for m in metrics}
  for by_variant in tests.values():
    adjust_family(by_variant, correction)
  primary = stats.task_primary_metrics(records)
  primary_metrics = [f"test/{m}" for m in primary.values()]
  stl_of, dm = {}, {}
  for name, v in variants.items():
    ref = stl_reference(v, variants)
    stl_of[name] = ref
    if ref is None:
      dm[name] = None
      continue
    means = {m: stats.cell(v.records, m).mean for m in primary_metrics}
    ref_means = {m: stats.cell(variants[ref].records, m).mean
                 for m in primary_metrics}
    dm[name] = stats.delta_m(means, ref_means)
  gap = {}
  if gap_closed:
    for m in metrics:
      sign = {"max": 1, "min": -1}.get(stats.direction(m))
      if sign is None:
        continue
      teacher = cells[m][gap_closed[0]]
      gap[m] = {}
      for d, own in gap_students.items():
        g = stats.gap_closed(teacher, cells[m][own], cells[m][d])
        # A positive share then means moving toward a WORSE teacher.
        g["teacher_better"] = (None if not (teacher.n and cells[m][own].n)
                               else sign * (teacher.mean - cells[m][own].mean)
                               > 0)
        gap[m][d] = g
  return Report(variants, metrics, cells, best, baseline, baseline_of, tests,
                dm, stl_of, primary, gap_closed, gap, correction,
                gap_students)


def adjust_family(tests: Mapping[str, stats.PairedTest], correction: str):
  """Sets t_adjusted / wilcoxon_adjusted of one metric's tests in place."""
  t_adj = stats.adjust_pvalues({k: t.t_pvalue for k, t in tests.items()},
                               correction)
  w_adj = stats.adjust_pvalues(
      {k: t.wilcoxon_pvalue for k, t in tests.items()}, correction)
  for k, t in tests.items():
    t.t_adjusted, t.wilcoxon_adjusted = t_adj[k], w_adj[k]


CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg",
                    "none": "no correction"}


def wilcoxon_reach_notes(tests: Mapping[str, stats.PairedTest],
                         correction: str) -> List[str]:
  """One line per seed count n at which the Wilcoxon test of these rows
  cannot reach p < ALPHA (after the correction), whatever the data."""
  family = [t for t in tests.values() if t.n >= 2]
  m = sum(t.wilcoxon_pvalue is not None for t in family) or len(family)
  notes = []
  for n in sorted({t.n for t in family}):
    p_min = stats.wilcoxon_min_pvalue(n)
    reach = stats.min_adjusted_pvalue(p_min, m, correction)
    if reach <= stats.ALPHA:
      continue
    need = n
    while stats.min_adjusted_pvalue(stats.wilcoxon_min_pvalue(need), m,
                                    correction) > stats.ALPHA:
      need += 1
    adjusted = ("" if correction == "none" or m == 1 else
                f"; after {CORRECTION_NAMES[correction]} over {m} rows, "
                f"{reach:.3g}")
    notes.append(
        f"With n = {n} paired seeds the two-sided Wilcoxon signed-rank test "
        f"cannot reach p < {stats.ALPHA:g} whatever the data: its smallest "
        f"p is 2/2^n = {p_min:.3g}{adjusted}. It needs n >= {need} seeds "
        "here; the t-test has no such floor.")
  return notes


def _parts(name: str) -> Dict[str, Optional[str]]:
  return dict(p.split("=", 1) if "=" in p else (p, None)
              for p in name.split("__"))


def baseline_row(variant: str, baseline: str, variants: Mapping
                 ) -> Optional[str]:
  """The row `variant` is tested against.

  `baseline` itself if it is a variant; else, among the variants that have
  all of `baseline`'s parts, the one that agrees with `variant` on every
  other part both have, sharing the most of them (None if none or a tie).
  """
  if baseline in variants:
    return baseline
  base, own = _parts(baseline), _parts(variant)
  scored = []
  for name in variants:
    parts = _parts(name)
    if any(parts.get(k, object()) != v for k, v in base.items()):
      continue
    common = [k for k in parts if k in own and k not in base]
    if all(parts[k] == own[k] for k in common):
      scored.append((len(common), name))
  if not scored:
    return None
  scored.sort(reverse=True)
  if len(scored) > 1 and scored[0][0] == scored[1][0]:
    return None
  return scored[0][1]


def _direction_words(metric):
  return {"max": "higher is better", "min": "lower is better"}.get(
      stats.direction(metric), "no direction: nothing in bold")


def to_markdown(report: Report, *, title: str, images: Sequence[str] = (),
                command: str = "") -> str:
  """The report as markdown (images are paths relative to the report)."""
  rv = report.variants
  n_runs = sum(len(v.records) for v in rv.values())
  has_dm = any(v is not None for v in report.delta_m.values())
  own = own_students(report.gap_students, (report.gap_variants[1:2] or
                                           (None,))[0])
  out = [f"# {title}", ""]
  if command:
    out += [f"`{command}`", ""]
  out += [
      f"{n_runs} runs, {len(rv)} variants. Cells: mean ± sample std "
      "(ddof=1) over seeds, n = seeds; **bold** = best mean. p-values: "
      f"paired over seeds against the baseline `{display(report.baseline)}` "
      + ("" if report.baseline in rv else
         "(for each row, the variant with its other overrides) ") +
      "(two-sided; `scipy.stats.ttest_rel`, Wilcoxon signed-rank "
      "`scipy.stats.wilcoxon`); n/a = fewer than 2 paired seeds, or "
      "differences all equal (t-test) / all zero (Wilcoxon)"
      + ("; a distilled student given with its own student in gap_closed "
         "is tested against that student, marked (vs ...)"
         if own else "") +
      ". Adjusted p-values (p adj.): "
      + {"holm": "Holm's step-down method (family-wise error rate)",
         "bh": "Benjamini-Hochberg (false discovery rate)",
         "none": "none, equal to the raw ones"}[report.correction] +
      ", over the rows compared with a baseline, per metric and test.", ""]
  # Overview.
  out += ["## Overview", ""]
  head = ["variant", "n"] + report.metrics + (["Δm (%)"] if has_dm else [])
  out += ["| " + " | ".join(head) + " |",
          "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
  for name, v in rv.items():
    n = max((report.cells[m][name].n for m in report.metrics), default=0)
    row = [display(name), str(n)]
    for m in report.metrics:
      text = mean_std(report.cells[m][name])
      row.append(f"**{text}**" if name in report.best[m] else text)
    if has_dm:
      row.append(_fmt(report.delta_m[name], 2))
    out.append("| " + " | ".join(row) + " |")
  out.append("")
  # One table per metric.
  for m in report.metrics:
    out += [f"## {m} ({_direction_words(m)})", "",
            "| variant | n | mean ± std | Δ vs baseline | p (t-test) | "
            "p (Wilcoxon) | p adj. (t-test) | p adj. (Wilcoxon) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in rv:
      c = report.cells[m][name]
      text = mean_std(c)
      text = f"**{text}**" if name in report.best[m] else text
      ref = report.baseline_of[name]
      if ref == name:
        row = [display(name) + " (baseline)", str(c.n), text] + ["–"] * 5
      elif ref is None:
        row = [display(name), str(c.n), text] + ["n/a"] * 5
      else:
        t = report.tests[m][name]
        base_mean = report.cells[m][ref].mean
        diff = c.mean - base_mean if c.n else math.nan
        label = (f"{display(name)} (vs {display(ref)})" if name in own
                 else display(name))
        row = [label, str(c.n), text, f"{diff:+.4f}"
               if math.isfinite(diff) else "n/a", _fmt_p(t.t_pvalue),
               _fmt_p(t.wilcoxon_pvalue), _fmt_p(t.t_adjusted),
               _fmt_p(t.wilcoxon_adjusted)]
      out.append("| " + " | ".join(row) + " |")
    out.append("")
    notes = wilcoxon_reach_notes(report.tests[m], report.correction)
    if notes:
      out += notes + [""]
  # Δm.
  if has_dm:
    tasks = ", ".join(f"{t}: {m}" for t, m in report.primary.items())
    out += ["## Δm vs single-task learning", "",
            "Δm = (1/T) Σ_t (-1)^{s_t} (M_t - M_t^STL) / M_t^STL × 100%, "
            "s_t = 1 when lower is better (LibMTL); over each task's primary "
            f"test metric ({tasks}), from the means over seeds. Positive = "
            "better than single-task.", "",
            "| variant | Δm (%) | single-task reference |", "|---|---:|---|"]
    for name in rv:
      ref = report.stl_of[name]
      out.append(f"| {display(name)} | {_fmt(report.delta_m[name], 2)} | "
                 f"{display(ref) if ref else '–'} |")
    out.append("")
  # Distillation: the share of the teacher-student gap closed.
  if report.gap:
    teacher = display(report.gap_variants[0])
    out += ["## Teacher–student gap closed by distillation", "",
            f"share = (M[distilled] - M[student]) / (M[{teacher}] - "
            f"M[student]) × 100%, the student being the one trained alone "
            "that the distilled student is measured against: 100% = the "
            "distilled student matches the teacher, 0% = no better than the "
            "student alone, < 0 = worse. From the means over seeds, and per "
            "seed (mean ± std over the seeds all three have).", "",
            "| metric | distilled | student | share of means (%) | "
            "per seed (%) | n |",
            "|---|---|---|---:|---:|---:|"]
    for m, by_distilled in report.gap.items():
      for d, g in by_distilled.items():
        per_seed = _fmt(g["per_seed_mean"], 1)
        if g["per_seed_std"] is not None:
          per_seed += f" ± {_fmt(g['per_seed_std'], 1)}"
        share = _fmt(g["of_means"], 1)
        if g.get("teacher_better") is False:
          share += " (teacher worse)"
        out.append(f"| {m} | {display(d)} | "
                   f"{display(report.gap_students[d])} | "
                   f"{share} | {per_seed} | {g['n']} |")
    if any(g.get("teacher_better") is False
           for by_distilled in report.gap.values()
           for g in by_distilled.values()):
      out += ["", "(teacher worse): the teacher's mean is no better than "
              "the student's, so a positive share means the distilled "
              "student moved toward a worse model."]
    out.append("")
  # Runs.
  out += ["## Runs", "",
          "| variant | seeds | steps | best step (mean) | wall s / run (mean) |",
          "|---|---|---:|---:|---:|"]
  for name, v in rv.items():
    seeds = ",".join(str(r["seed"]) for r in sorted(v.records,
                                                   key=lambda r: r["seed"]))
    steps = sorted({r.get("steps") for r in v.records}, key=str)
    best_steps = [r["best_step"] for r in v.records if r.get("best_step")]
    walls = [r["wall_time_s"] for r in v.records if r.get("wall_time_s")]
    best = _fmt(sum(best_steps) / len(best_steps), 0) if best_steps else "n/a"
    wall = _fmt(sum(walls) / len(walls), 1) if walls else "n/a"
    out.append(f"| {display(name)} | {seeds} | "
               f"{'/'.join(map(str, steps))} | {best} | {wall} |")
  out.append("")
  if images:
    out += ["## Plots", ""]
    out += [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in images]
    out.append("")
  return "\n".join(out)


def write(sweep_dir: str, out_dir: Optional[str] = None,
          baseline: Optional[str] = None,
          metrics: Optional[Sequence[str]] = None, command: str = "",
          gap_closed: Optional[Sequence[str]] = None,
          correction: str = "holm") -> str:
  """Writes <out_dir>/report.md and its PNGs; returns the report's path."""
  out_dir = out_dir or os.path.join(sweep_dir, "report")
  paths.path(out_dir).mkdir(parents=True, exist_ok=True)
  records = store.read(sweep_dir)
  report = build(records, metrics, baseline, gap_closed, correction)
  variants = list(report.variants.values())
  images = []
  keys = plots.numeric_swept_keys(variants)
  for key in keys:
    name = f"metric_vs_{key.split('.')[-1]}.png"
    plots.plot_metric_vs(key, variants, report.metrics,
                         os.path.join(out_dir, name))
    images.append(name)
  curves = plots.plot_curves(sweep_dir, variants,
                             os.path.join(out_dir, "curves.png"),
                             facet_key=keys[0] if keys else None)
  if curves:
    images.append("curves.png")
  title = f"Ablation report: {paths.path(sweep_dir).name}"
  text = to_markdown(report, title=title, images=images, command=command)
  path = os.path.join(out_dir, "report.md")
  paths.path(path).write_text(text)
  return path
