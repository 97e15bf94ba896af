"""Smoke test of benchmarks/train_throughput.py on a tiny workload file, and
compare_peer's ratios, targets and tables on hand-made JSON lines."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import compare_peer
from benchmarks import gemm_ceiling
from benchmarks import train_throughput

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = ("model", "parallel", "devices", "params", "params_dense",
        "train_examples_per_sec", "train_steps_per_sec", "train_clean_repeats",
        "infer_examples_per_sec", "pipeline_batches_per_sec",
        "pipeline_to_step_ratio", "compile_s", "first_step_s", "epoch_s",
        "auc_ctr", "auc_cvr", "logloss_ctr", "logloss_cvr", "bayes_auc_ctr",
        "bayes_auc_cvr", "peak_rss_mib", "recompiles_after_first_step",
        "jax_version", "data_sha256")


def _write_tiny_data(path, n=4096, vocab=100, seed=0):
  """Same arrays as ../shared/bench/make_bench_data.py, 4096 rows, vocab 100."""
  rng = np.random.default_rng(seed)
  sparse = rng.integers(0, vocab, (n, 26), dtype=np.int32)
  dense = rng.standard_normal((n, 13)).astype(np.float32)
  logits = dense[:, :2] + (sparse[:, :2] % 7 - 3) / 3.0
  true_prob = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
  labels = (rng.random((n, 2)) < true_prob).astype(np.float32)
  np.savez(path, sparse=sparse, dense=dense, labels=labels, true_prob=true_prob,
           n_train=np.array(n * 4 // 5, np.int64),
           vocab_sizes=np.full(26, vocab, np.int64),
           seed=np.array(seed, np.int64))


def _run(module, *args, timeout=120):
  """`python -m module args...` from the repository root (not raising)."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                        env=train_throughput.repo_env(), capture_output=True,
                        text=True, timeout=timeout, check=False)


def test_quick_run_prints_a_complete_json_line(tmp_path):
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  out = tmp_path / "lines.jsonl"
  proc = _run("benchmarks.train_throughput", "--quick", "--epoch", "--models",
              "mmoe", "--data", str(data), "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  rec = json.loads(lines[0])
  assert out.read_text().strip() == lines[0]
  missing = [k for k in KEYS if k not in rec]
  assert not missing, missing
  assert rec["model"] == "mmoe" and rec["parallel"] == "jit"
  for key in ("train_examples_per_sec", "train_steps_per_sec",
              "infer_examples_per_sec", "pipeline_batches_per_sec",
              "pipeline_to_step_ratio", "compile_s", "first_step_s",
              "epoch_s", "peak_rss_mib"):
    assert rec[key] > 0, (key, rec[key])
  assert rec["params"] == 26 * 100 * 16 + rec["params_dense"]
  for task in ("ctr", "cvr"):
    assert 0.0 <= rec[f"auc_{task}"] <= 1.0
    assert 0.5 < rec[f"bayes_auc_{task}"] <= 1.0
    assert rec[f"logloss_{task}"] > 0
  assert rec["recompiles_after_first_step"] == 0
  assert len(rec["data_sha256"]) == 64
  assert rec["compute_dtype"] == "float32"


def test_quick_run_in_bf16_compute(tmp_path):
  """--compute-dtype bfloat16 reaches train.compute_dtype and the eval step."""
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  proc = _run("benchmarks.train_throughput", "--quick", "--epoch", "--models",
              "shared_bottom", "--data", str(data), "--compute-dtype",
              "bfloat16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rec = json.loads(proc.stdout.strip().splitlines()[-1])
  assert rec["compute_dtype"] == "bfloat16" and "error" not in rec
  assert rec["train_examples_per_sec"] > 0 and rec["infer_examples_per_sec"] > 0
  assert rec["recompiles_after_first_step"] == 0
  for task in ("ctr", "cvr"):
    assert 0.0 <= rec[f"auc_{task}"] <= 1.0 and np.isfinite(
        rec[f"logloss_{task}"])


def test_quick_run_with_steps_per_call(tmp_path):
  """--steps-per-call 4 times `scan_step`; its compile is not counted as a
  recompile of the timed steps."""
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  proc = _run("benchmarks.train_throughput", "--quick", "--no-epoch",
              "--models", "mmoe", "--data", str(data), "--steps-per-call", "4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rec = json.loads(proc.stdout.strip().splitlines()[-1])
  assert rec["steps_per_call"] == 4 and "error" not in rec
  assert rec["train_examples_per_sec"] > 0 and rec["first_call_s"] > 0
  assert rec["recompiles_after_first_step"] == 0


@pytest.mark.slow  # minutes of CI; MTKD_RUN_SLOW=1 runs it
def test_weighting_cost_quick_lines(tmp_path):
  """One line per method and mode (EW first), each measured in its own
  subprocess (whose loop is `--in-process`'s, restricted to one method);
  ratios relative to that T's EW."""
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  proc = _run("benchmarks.weighting_cost", "--quick", "--tasks", "2",
              "--methods", "pcgrad", "--data", str(data), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recs = [json.loads(l) for l in proc.stdout.strip().splitlines()]
  assert [(r["method"], r["mode"]) for r in recs] == [
      ("ew", "param"), ("pcgrad", "param"), ("pcgrad", "rep")]
  ew_ms = recs[0]["step_ms"]
  for r in recs:
    assert r["tasks"] == 2 and r["step_ms"] > 0
    # step_ms is rounded to 0.01 ms (a quick step takes ~1 ms)
    assert r["ratio_to_ew"] == pytest.approx(r["step_ms"] / ew_ms, rel=2e-2)
    assert r["ratio_to_bound"] == pytest.approx(
        r["step_ms"] / ew_ms / (5 / 3), rel=2e-2)
    assert r["isolated"]


# ------------------------------------------------------------ compare_peer


def _ours(train, infer, auc_ctr, auc_cvr, rss, first_step=9.0, clean=3):
  """A train_throughput record (our field names)."""
  return {"model": "x", "train_examples_per_sec": train,
          "infer_examples_per_sec": infer, "auc_ctr": auc_ctr,
          "auc_cvr": auc_cvr, "peak_rss_mib": rss, "first_step_s": first_step,
          "compile_s": 4.0, "recompiles_after_first_step": 0,
          "train_clean_repeats": clean, "infer_clean_repeats": clean,
          "params": 5_327_330, "data_sha256": "abc", "jax_version": "0.10.2"}


def _peer(train, infer, auc_ctr, auc_cvr, rss, clean=3):
  """A peer_bench.py worker record (the peer's field names)."""
  return {"model": "rechub_x", "train_examples_per_sec": train,
          "infer_examples_per_sec": infer, "test_auc_ctr": auc_ctr,
          "test_auc_cvr": auc_cvr, "peak_rss_mib": rss, "n_params": 5_333_762,
          "train_clean_repeats": clean, "infer_clean_repeats": clean}


def _lines():
  mmoe = compare_peer.compare(
      "mmoe", "rechub_mmoe", _ours(17_000, 50_000, 0.7200, 0.6980, 700),
      _peer(7_500, 35_000, 0.7217, 0.7008, 749), repeats=3, smoke=False,
      peer_sha="abc", order="peer,ours")
  bottom = compare_peer.compare(  # exactly on the targets: they hold
      "shared_bottom", "rechub_sharedbottom",
      _ours(56_000, 280_000, 0.7205, 0.7041, 645, first_step=15.0),
      _peer(28_000, 200_000, 0.7225, 0.7041, 645), repeats=3, smoke=False,
      peer_sha="abc", order="ours,peer")
  ple = compare_peer.compare(  # the peer failed: nothing can be judged
      "ple", "rechub_ple", _ours(15_000, 40_000, 0.72, 0.70, 800),
      {"model": "rechub_ple", "error": "worker exit code 1"}, repeats=3,
      smoke=False, peer_sha=None, order="peer,ours")
  return mmoe, bottom, ple


def test_compare_peer_ratios_and_targets():
  mmoe, bottom, ple = _lines()
  assert mmoe["train_ratio"] == pytest.approx(17_000 / 7_500, abs=1e-3)
  assert mmoe["infer_ratio"] == pytest.approx(50_000 / 35_000, abs=1e-3)
  assert mmoe["auc_ctr_diff"] == pytest.approx(-0.0017)
  assert mmoe["auc_cvr_diff"] == pytest.approx(-0.0028)
  assert mmoe["peer_auc_ctr"] == 0.7217  # test_auc_ctr mapped to auc_ctr
  t = mmoe["targets"]
  assert t["train_ratio"]["ok"] and t["train_ratio"]["need"] == ">= 2.2x peer"
  assert t["infer_ratio"]["ok"] and t["auc_ctr"]["ok"]
  assert not t["auc_cvr"]["ok"]  # -0.0028 < -0.002
  assert t["first_step_s"]["ok"] and t["recompiles"]["ok"]
  assert t["peak_rss"]["ok"]  # 700 <= 749 MiB
  assert mmoe["targets_met"] is False
  assert mmoe["valid"] and mmoe["same_data"] and not mmoe["errors"]

  assert bottom["train_ratio"] == 2.0 and bottom["auc_ctr_diff"] == -0.002
  assert bottom["targets"]["train_ratio"]["need"] == ">= 2.0x peer"
  assert all(v["ok"] for v in bottom["targets"].values()), bottom["targets"]
  assert bottom["targets_met"] is True

  assert ple["train_ratio"] is None and ple["targets_met"] is None
  assert ple["targets"]["train_ratio"]["ok"] is None
  assert ple["targets"]["first_step_s"]["ok"]  # ours alone still judged
  assert ple["errors"] == ["peer: worker exit code 1"] and not ple["valid"]

  smoke = compare_peer.compare(
      "mmoe", "rechub_mmoe", _ours(17_000, 50_000, 0.72, 0.70, 700, clean=1),
      _peer(7_500, 35_000, 0.72, 0.70, 749, clean=0), repeats=1, smoke=True)
  assert not smoke["valid"] and not smoke["all_clean"]
  json.dumps(smoke)  # a JSON line


def test_compare_peer_rounds_take_the_median_and_the_worst():
  ours = [_ours(20_000, 80_000, 0.7210, 0.7100, 690, first_step=1.8),
          {**_ours(24_000, 84_000, None, None, 640, first_step=2.5, clean=2),
           "recompiles_after_first_step": 1},
          _ours(23_000, 70_000, None, None, 700, first_step=1.7)]
  peer = [_peer(10_000, 50_000, 0.7215, 0.7010, 750),
          _peer(10_500, 56_000, 0.7215, 0.7010, 760),
          _peer(9_000, 52_000, 0.7215, 0.7010, 740)]
  orders = ["peer,ours", "ours,peer", "peer,ours"]
  line = compare_peer.compare("mmoe", "rechub_mmoe", ours, peer, repeats=3,
                              smoke=False, peer_sha="abc", order=orders)
  # Medians of the rounds: ours 23k / 80k, the peer's 10k / 52k.
  assert line["ours_train_examples_per_sec"] == 23_000
  assert line["peer_train_examples_per_sec"] == 10_000
  assert line["train_ratio"] == 2.3
  assert line["infer_ratio"] == pytest.approx(80_000 / 52_000, abs=1e-3)
  assert [r["train_ratio"] for r in line["rounds"]] == [2.0, 2.286, 2.556]
  assert [r["infer_ratio"] for r in line["rounds"]] == [1.6, 1.5, 1.346]
  assert [r["order"] for r in line["rounds"]] == orders
  assert line["order"] == "peer,ours;ours,peer;peer,ours"
  # Quality from the first round; RSS, first step: the worst round.
  assert line["ours_auc_ctr"] == 0.7210 and line["auc_ctr_diff"] == -0.0005
  assert line["ours_peak_rss_mib"] == 700 and line["peer_peak_rss_mib"] == 760
  assert line["ours_first_step_s"] == 2.5
  # One round's recompile and its 2 clean repeats fail the whole pair.
  assert line["ours_recompiles_after_first_step"] == 1
  assert not line["targets"]["recompiles"]["ok"]
  assert line["ours_train_clean_repeats"] == 2 and not line["valid"]
  assert line["raw"]["ours"] == ours  # every round's record

  failed = compare_peer.compare(
      "mmoe", "rechub_mmoe", ours[:2],
      [peer[0], {"model": "rechub_mmoe", "error": "worker exit code 1"}],
      repeats=3, smoke=False, peer_sha="abc", order=orders[:2])
  assert failed["errors"] == ["peer: round 2: worker exit code 1"]
  with pytest.raises(ValueError, match="rounds"):
    compare_peer.compare("mmoe", "rechub_mmoe", ours, peer[:2], repeats=3,
                         smoke=False)
  table = compare_peer.render_markdown([line])
  assert "| round 1 | round 2 | round 3 |" in table
  assert "| mmoe | 2.00 / 1.60 (train 20,000 / 10,000; infer 80,000 / " \
         "50,000) |" in table


def test_compare_peer_markdown_and_doc(tmp_path, capsys):
  lines = list(_lines()) + [{"kind": "run", "started_at": "t0",
                             "finished_at": "t1",
                             "machine": {"simd": "avx2 fma",
                                         "gemm_gflops": 121.9},
                             "versions": {"jax": "0.10.2"}}]
  path = tmp_path / "lines.jsonl"
  path.write_text("".join(json.dumps(l) + "\n" for l in lines))
  assert compare_peer.main(["--markdown", str(path)]) == 0
  table = capsys.readouterr().out
  assert "SMOKE" not in table and "jax 0.10.2" in table
  assert "(avx2 fma; JAX float32 GEMM 121.9 GFLOP/s)" in table
  assert ("| mmoe / rechub_mmoe | 17,000 | 7,500 | 2.27 | 50,000 | 35,000 "
          "| 1.43 | 0.7200 / 0.7217 (-0.0017) | 0.6980 / 0.7008 (-0.0028) "
          "| 9.0 (4.0) | 700 / 749 | 3, 3 / 3, 3 | yes |") in table
  assert ("| mmoe | ✓ 2.27 (≥ 2.2) | ✓ 1.43 | ✓ -0.0017 | ✗ -0.0028 "
          "| ✓ 9.0 | ✓ 0 | ✓ 0.94 | no |") in table
  assert "| shared_bottom | ✓ 2.00 (≥ 2.0) |" in table
  assert "| ple | – (≥ 2.2) | – |" in table
  assert "| 800 / – | 3, 3 / –, – | no |" in table
  assert "Errors: peer: worker exit code 1" in table

  smoke = dict(lines[0], smoke=True, valid=False)
  path.write_text(json.dumps(smoke) + "\n")
  assert "SMOKE RUN" in compare_peer.render_markdown([smoke])

  page = tmp_path / "page.md"
  page.write_text(f"# Title\n{compare_peer.BEGIN}\nold table\n"
                  f"{compare_peer.END}\nafter\n")
  assert compare_peer.main(["--markdown", str(path), "--doc", str(page)]) == 0
  text = page.read_text()
  assert "old table" not in text and "SMOKE RUN" in text
  assert text.startswith("# Title\n") and text.endswith("\nafter\n")
  with pytest.raises(ValueError, match="markers"):
    compare_peer.splice("no markers", "table")


def test_compare_peer_reads_the_peers_field_names():
  """Every peer field that compare_peer maps or reads is in peer_bench.py."""
  bench = compare_peer.DEFAULT_PEER_BENCH
  if not bench.exists():
    pytest.skip(f"{bench} not found (../shared is not checked out)")
  source = bench.read_text()
  used = set(compare_peer.PEER_FIELDS) | {
      "train_examples_per_sec", "train_clean_repeats", "infer_examples_per_sec",
      "infer_clean_repeats", "peak_rss_mib", "rss_after_data_load_mib",
      "content_sha256", "epoch_steps"}
  # A key, a keyword argument, or an f-string prefix (f"test_auc_{name}").
  missing = [k for k in sorted(used) if not (
      re.search(rf"\b{k}\b", source) or k.rsplit("_", 1)[0] + "_{" in source)]
  assert not missing, missing
  for _, peer in compare_peer.PAIRS:
    assert f'"{peer}"' in source, peer


def test_compare_peer_finds_the_peer_venv():
  python = compare_peer.peer_python()
  if not os.path.exists(python):
    pytest.skip(f"no peer venv at {python} (../shared/bench/PEER.md installs "
                "one; set PEER_PYTHON or PEER_VENV)")
  versions = compare_peer.peer_versions(python)
  assert versions["torch"].startswith("2.13.0"), versions
  assert versions["torch-rechub"] == "0.9.0", versions


def test_step_ab_prints_one_line_per_variant(tmp_path, capsys):
  """Paired variants of the step in one process: a line each, the first
  variant's difference to itself 0; a bad variant or key stops at once."""
  from benchmarks import step_ab  # pylint: disable=g-import-not-at-top
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  assert step_ab.main(["--data", str(data), "--variants",
                       "base,accel=off", "--rounds", "2", "--block",
                       "1", "--warmup", "1", "--eval", "--eval-block",
                       "1"]) == 0
  recs = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
  assert [r["variant"] for r in recs] == ["base", "accel=off"]
  assert recs[0]["median_diff_to_first_ms"] == 0.0
  assert recs[0]["eval_median_diff_to_first_ms"] == 0.0
  for r in recs:
    assert 0 < r["min_ms"] <= r["q25_ms"] <= r["median_ms"]
    assert 0 < r["eval_min_ms"] <= r["eval_q25_ms"] <= r["eval_median_ms"]
  assert step_ab.parse_variant("log_every=1+embedding_grads=dense") == {
      "log_every": "1", "embedding_grads": "dense"}
  with pytest.raises(SystemExit, match="bad variant"):
    step_ab.parse_variant("log_every")


# ------------------------------------------------------------ gemm_ceiling


def test_gemm_ceiling_times_the_product_it_names(capsys):
  assert gemm_ceiling.main(["--shape", "64,32,16", "--iters", "2",
                            "--repeats", "3"]) == 0
  line = json.loads(capsys.readouterr().out)
  assert line["kind"] == "gemm" and line["shape"] == [64, 32, 16]
  assert len(line["gflops_all"]) == 3 and line["gflops"] > 0
  assert line["gflops"] == sorted(line["gflops_all"])[1]  # the median
  with pytest.raises(SystemExit):
    gemm_ceiling.main(["--shape", "64,32"])
  assert compare_peer.gemm_ceiling() > 0  # the run line's figure

