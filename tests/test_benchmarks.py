"""Smoke test of benchmarks/train_throughput.py on a tiny workload file."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

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


def test_quick_run_prints_a_complete_json_line(tmp_path):
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  out = tmp_path / "lines.jsonl"
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_throughput", "--quick",
       "--epoch", "--models", "mmoe", "--data", str(data), "--out", str(out)],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
      check=False)
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
