"""Smoke test of benchmarks/embedding_scale.py on a tiny workload file."""
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import embedding_scale
from benchmarks import train_throughput
from tests.conftest import REPO


def _write_tiny_data(path, n=4096, vocab=100, seed=0):
  """The arrays of ../shared/bench/make_bench_data.py, 4096 rows, vocab 100."""
  rng = np.random.default_rng(seed)
  sparse = rng.integers(0, vocab, (n, 26), dtype=np.int32)
  dense = rng.standard_normal((n, 13)).astype(np.float32)
  labels = (rng.random((n, 2)) < 0.3).astype(np.float32)
  np.savez(path, sparse=sparse, dense=dense, labels=labels,
           true_prob=np.full((n, 2), 0.3, np.float32),
           n_train=np.array(n * 4 // 5, np.int64),
           vocab_sizes=np.full(26, vocab, np.int64))


def test_map_ids_is_injective():
  ids = np.arange(10_000, dtype=np.int32)
  for rows in (10_000, 10**5, 10**6, 10**7):
    mapped = embedding_scale.map_ids(ids, rows)
    assert mapped.min() >= 0 and mapped.max() < rows
    assert len(np.unique(mapped)) == len(ids)


@pytest.mark.slow  # minutes of CI; MTKD_RUN_SLOW=1 runs it
def test_quick_run_prints_json_lines(tmp_path):
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  env = train_throughput.repo_env()
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.embedding_scale", "--data", str(data),
       "--fields", "2", "--rows", "10000,100000", "--optimizers",
       "row_adagrad", "--batch-size", "256", "--steps", "2", "--warmup", "1",
       "--repeats", "1", "--max-repeats", "1", "--idle-wait", "0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recs = [json.loads(l) for l in proc.stdout.strip().splitlines()]
  assert [r["rows_per_field"] for r in recs] == [10_000, 100_000]
  for r in recs:
    assert r["optimizer"] == "row_adagrad" and r["step_ms"] > 0
    assert r["opt_state_gb"] > 0 and r["ratio_to_smallest"] > 0
  assert recs[0]["distinct_rows_per_batch"] == recs[1]["distinct_rows_per_batch"]


def test_worker_env_sets_the_fake_device_count_once():
  env = embedding_scale.worker_env(8)
  assert env["XLA_FLAGS"].split().count(
      "--xla_force_host_platform_device_count=8") == 1
  assert "device_count=4" not in embedding_scale.worker_env(8)["XLA_FLAGS"]
  assert embedding_scale.worker_env(0).get("XLA_FLAGS") == train_throughput.repo_env().get("XLA_FLAGS")


def test_table_shard_rows_sees_the_rows_of_one_device():
  from mtkd_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mtkd_jax.train import parallel  # pylint: disable=g-import-not-at-top
  params = {"embedding": {"sparse_table_d4": np.zeros((1000, 4), np.float32)},
            "tower": {"kernel": np.zeros((1000, 4), np.float32)}}
  mesh = parallel.make_mesh(0, "model:4")
  sharded = mesh_lib.place_state(params, mesh)
  assert embedding_scale.table_shard_rows(sharded, 4) == 250
  replicated = parallel.replicate(params, mesh)
  assert embedding_scale.table_shard_rows(replicated, 1) == 1000
  with pytest.raises(AssertionError):  # a whole table on every device
    embedding_scale.table_shard_rows(replicated, 4)


@pytest.mark.slow  # about a minute of CI; MTKD_RUN_SLOW=1 runs it
def test_mesh_run_shards_the_table_over_fake_devices(tmp_path):
  data = tmp_path / "tiny.npz"
  _write_tiny_data(data)
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.embedding_scale", "--data", str(data),
       "--fields", "1", "--dim", "4", "--rows", "1000,10000", "--optimizers",
       "row_adagrad", "--devices", "2", "--mesh", "model:2",
       "--batch-size", "256", "--steps", "2", "--warmup", "1",
       "--repeats", "1", "--max-repeats", "1", "--idle-wait", "0"],
      cwd=REPO, env=train_throughput.repo_env(), capture_output=True,
      text=True, timeout=180, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recs = [json.loads(l) for l in proc.stdout.strip().splitlines()]
  assert [r["rows_per_field"] for r in recs] == [1000, 10_000]
  for r in recs:
    assert r["devices"] == 2 and r["mesh"] == "model:2"
    assert r["shard_rows"] == r["rows_per_field"] // 2
    assert r["embedding_dim"] == 4 and r["step_ms"] > 0
    assert r["peak_rss_mib_after_init"] > 0
