"""The report's numbers against a small hand-made results store: mean, sample
std, best cell, Δm (by hand) and paired p-values (scipy directly)."""
import json
import math

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
