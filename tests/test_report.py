"""The report's numbers against a small hand-made results store: mean, sample
std, best cell, Δm (by hand) and paired p-values (scipy directly)."""
import json
import math

import numpy as np
import pytest
from scipy import stats as sp_stats

from experiments import report as report_cli
from mtkd_jax.ablation import report
from mtkd_jax.ablation import stats
from mtkd_jax.ablation import store

# variant -> seed -> (y/rmse, c/auc); model.name decides the STL reference.
DATA = {
    "stl": {0: (1.00, 0.70), 1: (1.10, 0.72), 2: (0.90, 0.71)},
    "mmoe": {0: (0.90, 0.74), 1: (0.95, 0.75), 2: (0.85, 0.73)},
    "sb": {0: (1.05, 0.72), 1: (1.15, 0.70), 2: (0.95, 0.71)},
    "one": {0: (0.80, 0.80)},  # a single seed
}
MODEL = {"stl": "single_task", "mmoe": "mmoe", "sb": "shared_bottom",
         "one": "omoe"}
LR = {"stl": 1e-3, "mmoe": 1e-3, "sb": 1e-3, "one": 1e-2}


def make_store(tmp_path, with_curves=False):
  d = tmp_path / "sweep"
  d.mkdir()
  index = 0
  for variant, seeds in DATA.items():
    for seed, (rmse, auc) in seeds.items():
      name = f"{variant}__seed={seed}"
      record = {
          "name": name, "variant": variant, "index": index,
          "overrides": {"model.name": MODEL[variant],
                        "optimizer.learning_rate": LR[variant], "seed": seed},
          "seed": seed, "validation": {"y/rmse": rmse + 0.01},
          "test": {"y/rmse": rmse, "y/mae": rmse / 2, "c/auc": auc,
                   "c/logloss": 0.5, "gates/c/expert_0": 0.5},
          "best_step": 10, "steps": 20, "select_metric": "y/rmse",
          "wall_time_s": 1.5, "workdir": name, "mode": "run"}
      index += 1
      store.append(str(d), record)
      if with_curves:
        (d / name).mkdir()
        with open(d / name / "metrics.jsonl", "w") as f:
          for step in (5, 10, 15, 20):
            f.write(json.dumps({"step": step, "split": "train",
                                "loss": 3.0 / step + seed * 0.01}) + "\n")
            f.write(json.dumps({"step": step, "split": "validation",
                                "y/rmse": rmse + 1.0 / step}) + "\n")
  # A stale duplicate line of one run: the report keeps the last one.
  lines = (d / "results.jsonl").read_text().splitlines()
  stale = json.loads(lines[0])
  stale["test"]["y/rmse"] = 99.0
  (d / "results.jsonl").write_text("\n".join([json.dumps(stale)] + lines) + "\n")
  return d


def test_direction_from_metric_name():
  for name in ("test/c/auc", "gauc", "ndcg@10", "recall", "hr", "mrr",
               "c/bayes_auc"):
    assert stats.direction(name) == "max", name
  for name in ("y/rmse", "logloss", "mae", "loss", "validation/mean/rmse"):
    assert stats.direction(name) == "min", name
  assert stats.direction("c/pcoc") is None


def test_numbers_match_hand_computation(tmp_path):
  d = make_store(tmp_path)
  records = store.read(str(d))
  assert len(records) == 10  # deduplicated by run name
  r = report.build(records, baseline="sb")
  assert r.metrics == ["test/c/auc", "test/y/rmse"]
  assert r.primary == {"c": "c/auc", "y": "y/rmse"}

  mmoe_rmse = r.cells["test/y/rmse"]["mmoe"]
  assert mmoe_rmse.n == 3
  assert mmoe_rmse.mean == pytest.approx(0.90)
  # Sample std by hand: deviations (0, .05, -.05) -> sqrt(.005 / 2) = .05.
  assert mmoe_rmse.std == pytest.approx(0.05)
  assert math.isnan(r.cells["test/y/rmse"]["one"].std)
  assert r.best["test/y/rmse"] == ["one"]  # lowest rmse
  assert r.best["test/c/auc"] == ["one"]  # highest auc

  # Δm by hand for mmoe vs stl: rmse (lower better) and auc (higher better).
  stl_rmse, stl_auc = 1.0, 0.71
  mm_rmse, mm_auc = 0.90, 0.74
  want = 100 * 0.5 * (-(mm_rmse - stl_rmse) / stl_rmse +
                      (mm_auc - stl_auc) / stl_auc)
  assert r.delta_m["mmoe"] == pytest.approx(want)
  assert r.delta_m["stl"] == pytest.approx(0.0)
  assert r.stl_of["sb"] == "stl"
  assert r.stl_of["one"] is None and r.delta_m["one"] is None  # other lr

  # Paired tests against sb, with scipy directly.
  for metric, col in (("test/y/rmse", 0), ("test/c/auc", 1)):
    a = [DATA["mmoe"][s][col] for s in range(3)]
    b = [DATA["sb"][s][col] for s in range(3)]
    t = r.tests[metric]["mmoe"]
    assert t.n == 3
    assert t.t_pvalue == pytest.approx(sp_stats.ttest_rel(a, b).pvalue)
    assert t.wilcoxon_pvalue == pytest.approx(sp_stats.wilcoxon(a, b).pvalue)
  # stl vs sb rmse: differences all equal (-0.05): no t-test, Wilcoxon works.
  t = r.tests["test/y/rmse"]["stl"]
  assert t.t_pvalue is None and t.wilcoxon_pvalue == pytest.approx(0.25)
  assert r.tests["test/y/rmse"]["one"].t_pvalue is None  # n = 1
  assert r.tests["test/y/rmse"]["one"].wilcoxon_pvalue is None


def test_paired_tests_all_zero_differences():
  cell = stats.Cell({0: 1.0, 1: 2.0, 2: 3.0})
  t = stats.paired_tests(cell, cell)
  assert (t.n, t.t_pvalue, t.wilcoxon_pvalue) == (3, None, None)


def test_markdown_and_plots(tmp_path):
  d = make_store(tmp_path, with_curves=True)
  out = tmp_path / "out"
  report_cli.main([str(d), "--baseline", "sb", "--out", str(out),
                   "--metrics", "y/rmse,c/auc,validation/y/rmse"])
  text = (out / "report.md").read_text()
  # Overview row of mmoe: bold only where it is best (nowhere: 'one' is).
  assert "| mmoe | 3 | 0.9000 ± 0.0500 | 0.7400 ± 0.0100 | 0.9100 ± 0.0500 | " in text
  assert "**0.8000 ± n/a**" in text
  want_dm = 100 * 0.5 * (0.1 + 0.03 / 0.71)
  assert f"| mmoe | {want_dm:.2f} | stl |" in text
  assert "## test/y/rmse (lower is better)" in text
  assert "## test/c/auc (higher is better)" in text
  p_t = sp_stats.ttest_rel([0.9, 0.95, 0.85], [1.05, 1.15, 0.95]).pvalue
  p_w = sp_stats.wilcoxon([0.9, 0.95, 0.85], [1.05, 1.15, 0.95]).pvalue
  assert f"| mmoe | 3 | 0.9000 ± 0.0500 | -0.1500 | {p_t:.3g} | {p_w:.3g} |" in text
  assert "| stl | 3 | 1.0000 ± 0.1000 | -0.0500 | n/a | 0.25 |" in text
  assert "| sb (baseline) | 3 |" in text
  assert "| one | 1 | **0.8000 ± n/a** | -0.2500 | n/a | n/a |" in text
  for png in ("metric_vs_learning_rate.png", "curves.png"):
    assert (out / png).stat().st_size > 10_000
    assert f"]({png})" in text


def test_unknown_baseline_lists_variants(tmp_path):
  d = make_store(tmp_path)
  with pytest.raises(ValueError, match="Baseline 'nope' is not a variant; "
                     "variants: stl, mmoe, sb, one"):
    report.build(store.read(str(d)), baseline="nope")


def test_partial_baseline_pairs_rows_within_their_group():
  variants = ["p=0.5__name=sb", "p=0.5__name=mmoe", "p=1.0__name=sb",
              "p=1.0__name=mmoe", "p=1.0__name=stl__diag=0"]
  row = {v: report.baseline_row(v, "name=mmoe", variants) for v in variants}
  assert row == {"p=0.5__name=sb": "p=0.5__name=mmoe",
                 "p=0.5__name=mmoe": "p=0.5__name=mmoe",
                 "p=1.0__name=sb": "p=1.0__name=mmoe",
                 "p=1.0__name=mmoe": "p=1.0__name=mmoe",
                 "p=1.0__name=stl__diag=0": "p=1.0__name=mmoe"}
  assert report.baseline_row("p=0.5__name=sb", "p=1.0__name=mmoe",
                             variants) == "p=1.0__name=mmoe"  # a full name
  assert report.baseline_row("p=0.5__name=sb", "name=dselect",
                             variants) is None


# ------------------------------------------------ multiple comparisons


P4 = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand():
  # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06,
  # 0.04 x 1 = 0.04 -> 0.06 (step-down: never below an earlier one).
  assert stats.holm(P4) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # Capped at 1: 0.4 x 3 = 1.2.
  assert stats.holm([0.4, 0.5, 0.45]) == pytest.approx([1.0, 1.0, 1.0])
  assert stats.holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])


def test_benjamini_hochberg_by_hand():
  # Sorted: 0.005 x 4/1 = 0.02, 0.01 x 4/2 = 0.02, 0.03 x 4/3 = 0.04,
  # 0.04 x 4/4 = 0.04; then the running minimum from the top.
  assert stats.benjamini_hochberg(P4) == pytest.approx(
      [0.02, 0.04, 0.04, 0.02])
  # 0.02 x 2/1 = 0.04 > 0.03 x 2/2 = 0.03: the minimum from above wins.
  assert stats.benjamini_hochberg([0.02, 0.03]) == pytest.approx([0.03, 0.03])


def test_adjustments_match_independent_implementations():
  rng = np.random.default_rng(0)
  for m in (1, 2, 5, 14):
    p = list(rng.uniform(0, 0.2, m))
    assert stats.benjamini_hochberg(p) == pytest.approx(
        list(sp_stats.false_discovery_control(p, method="bh")))
    try:
      from statsmodels.stats import multitest  # pylint: disable=g-import-not-at-top
    except ImportError:
      continue
    for ours, theirs in ((stats.holm, "holm"), (stats.benjamini_hochberg,
                                                "fdr_bh")):
      assert ours(p) == pytest.approx(
          list(multitest.multipletests(p, method=theirs)[1]))


def test_adjust_pvalues_leaves_untested_rows_out_of_the_family():
  raw = {"a": 0.01, "b": None, "c": 0.04, "d": 0.03, "e": 0.005}
  holm = stats.adjust_pvalues(raw, "holm")
  assert holm == pytest.approx(
      {"a": 0.03, "b": None, "c": 0.06, "d": 0.06, "e": 0.02})
  assert stats.adjust_pvalues(raw, "bh") == pytest.approx(
      {"a": 0.02, "b": None, "c": 0.04, "d": 0.04, "e": 0.02})
  assert stats.adjust_pvalues(raw, "none") == raw
  with pytest.raises(ValueError, match="valid: holm, bh, none"):
    stats.adjust_pvalues(raw, "bonferoni")


def test_wilcoxon_floor_is_scipys_p_for_differences_of_one_sign():
  for n in range(2, 9):
    diffs = [0.1 * (i + 1) for i in range(n)]  # all positive, no ties
    p = sp_stats.wilcoxon(diffs).pvalue
    assert stats.wilcoxon_min_pvalue(n) == pytest.approx(p)
  assert stats.wilcoxon_min_pvalue(3) == 0.25
  assert stats.min_adjusted_pvalue(0.0625, 14, "holm") == pytest.approx(0.875)
  assert stats.min_adjusted_pvalue(0.0625, 14, "bh") == 0.0625


def test_report_adjusts_each_metric_and_says_when_wilcoxon_cannot_reach():
  # test/y/rmse against sb: mmoe (t-test p_t, Wilcoxon 0.25: differences
  # all negative) and stl (no t-test, Wilcoxon 0.25) are compared; 'one'
  # (n = 1) is not.
  records = [
      {"name": f"{v}__seed={s}", "variant": v, "seed": s, "index": i,
       "overrides": {"model.name": MODEL[v], "seed": s},
       "test": {"y/rmse": rmse, "c/auc": auc}}
      for i, (v, seeds) in enumerate(DATA.items())
      for s, (rmse, auc) in seeds.items()]
  p_t = sp_stats.ttest_rel([0.9, 0.95, 0.85], [1.05, 1.15, 0.95]).pvalue
  r = report.build(records, ["y/rmse"], baseline="sb")
  tests = r.tests["test/y/rmse"]
  assert tests["mmoe"].t_adjusted == pytest.approx(p_t)  # a family of one
  assert tests["mmoe"].wilcoxon_adjusted == pytest.approx(0.5)  # 2 x 0.25
  assert tests["stl"].wilcoxon_adjusted == pytest.approx(0.5)
  assert tests["stl"].t_adjusted is None and tests["one"].t_adjusted is None
  text = report.to_markdown(r, title="t")
  assert f"| mmoe | 3 | 0.9000 ± 0.0500 | -0.1500 | {p_t:.3g} | 0.25 | " \
         f"{p_t:.3g} | 0.5 |" in text
  # Holm over 2 rows: 2 x 2/2^n <= 0.05 needs 2^(n-1) >= 40, n = 7.
  assert ("With n = 3 paired seeds the two-sided Wilcoxon signed-rank test "
          "cannot reach p < 0.05 whatever the data: its smallest p is 2/2^n "
          "= 0.25; after Holm over 2 rows, 0.5. It needs n >= 7 seeds here"
          ) in text
  bh = report.build(records, ["y/rmse"], baseline="sb", correction="bh")
  assert bh.tests["test/y/rmse"]["mmoe"].wilcoxon_adjusted == pytest.approx(
      0.25)
  # 2/2^n <= 0.05 needs 2^(n-1) >= 20, n = 6.
  assert "It needs n >= 6 seeds" in report.to_markdown(bh, title="t")
  with pytest.raises(ValueError, match="valid: holm, bh, none"):
    report.build(records, ["y/rmse"], baseline="sb", correction="fdr")


def test_no_wilcoxon_note_when_the_seeds_suffice():
  seeds = range(7)
  records = [{"name": f"{v}__seed={s}", "variant": v, "seed": s,
              "overrides": {"model.name": v, "seed": s},
              "test": {"y/rmse": base + 0.01 * s + (0.1 if v == "b" else 0)
                       + 0.001 * s * s}}
             for v, base in (("a", 1.0), ("b", 1.0)) for s in seeds]
  r = report.build(records, ["y/rmse"], baseline="a")
  assert r.tests["test/y/rmse"]["b"].n == 7
  assert "cannot reach" not in report.to_markdown(r, title="t")


def test_gap_closed_for_several_distilled_variants(tmp_path):
  # teacher = mmoe, student = stl, distilled = sb and one (c/auc by hand).
  records = store.read(str(make_store(tmp_path)))
  rep = report.build(records, ["c/auc"], "stl", ("mmoe", "stl", "sb", "one"))
  gap = rep.gap["test/c/auc"]
  teacher, student = 0.74, 0.71  # means of mmoe and stl
  assert gap["sb"]["of_means"] == pytest.approx(
      100 * (0.71 - student) / (teacher - student))
  # Per seed: seeds 0, 1, 2 of all three.
  per_seed = [100 * (d - s) / (t - s) for t, s, d in
              ((0.74, 0.70, 0.72), (0.75, 0.72, 0.70), (0.73, 0.71, 0.71))]
  assert gap["sb"]["per_seed_mean"] == pytest.approx(np.mean(per_seed))
  assert gap["sb"]["n"] == 3
  assert gap["one"]["of_means"] == pytest.approx(
      100 * (0.80 - student) / (teacher - student))
  # "one" has seed 0 only: the per-seed share is that of seed 0.
  assert gap["one"]["n"] == 1 and gap["one"]["per_seed_std"] is None
  assert gap["one"]["per_seed_mean"] == pytest.approx(
      100 * (0.80 - 0.70) / (0.74 - 0.70))
  text = report.to_markdown(rep, title="kd")
  assert ("| test/c/auc | sb | stl | 0.0 |" in text
          and "| test/c/auc | one | stl |" in text)
  assert "(vs " not in text  # every distilled row is tested against stl
  with pytest.raises(ValueError, match="three or more"):
    report.build(records, ["c/auc"], "stl", ("mmoe", "stl"))


def test_gap_closed_against_a_distilled_variant_s_own_student(tmp_path):
  # "sb/stl": sb measured and tested against stl, not the baseline "one".
  records = store.read(str(make_store(tmp_path)))
  rep = report.build(records, ["c/auc"], "one", ("mmoe", "one", "sb/stl"))
  assert rep.gap_variants == ("mmoe", "one", "sb")
  assert rep.gap_students == {"sb": "stl"}
  assert rep.baseline_of["sb"] == "stl" and rep.baseline_of["mmoe"] == "one"
  gap = rep.gap["test/c/auc"]["sb"]
  per_seed = [100 * (d - s) / (t - s) for t, s, d in
              ((0.74, 0.70, 0.72), (0.75, 0.72, 0.70), (0.73, 0.71, 0.71))]
  assert gap["per_seed_mean"] == pytest.approx(np.mean(per_seed))
  assert gap["of_means"] == pytest.approx(0.0, abs=1e-9)  # 0.71 both
  sb, stl = [0.72, 0.70, 0.71], [0.70, 0.72, 0.71]
  assert rep.tests["test/c/auc"]["sb"].t_pvalue == pytest.approx(
      sp_stats.ttest_rel(sb, stl).pvalue)
  text = report.to_markdown(rep, title="kd")
  assert "| sb (vs stl) | 3 |" in text
  assert "| test/c/auc | sb | stl |" in text
  assert gap["teacher_better"] is True
  assert "(teacher worse)" not in text
  # The teacher (stl, 0.71) below the student (mmoe, 0.74): flagged.
  worse = report.build(records, ["c/auc"], "one", ("stl", "mmoe", "sb"))
  assert worse.gap["test/c/auc"]["sb"]["teacher_better"] is False
  assert "| test/c/auc | sb | mmoe | 100.0 (teacher worse) |" in (
      report.to_markdown(worse, title="kd"))
  with pytest.raises(ValueError, match="distilled\\[/its student\\]"):
    report.build(records, ["c/auc"], "one", ("mmoe", "one", "sb/nope"))
