"""Workdirs through etils.epath: a remote scheme writes nothing locally; an
unsupported one stops with one line naming what to install.

Orbax's array files go through tensorstore, which does not see the fake
in-memory gs:// below, so the run's own files are tested piece by piece
(lock, config, metrics) and an ablation's runs are stubbed; export and
predict read a local run and write only to gs://.
"""
import importlib.machinery
import json
import subprocess
import sys
import types

import fsspec
import numpy as np
import pytest
from fsspec.implementations import memory

from configs import synthetic_mmoe
from mtkd_jax import errors
from mtkd_jax import export
from mtkd_jax import paths
from mtkd_jax import sweeps
from mtkd_jax.ablation import driver
from mtkd_jax.ablation import report
from mtkd_jax.ablation import store
from mtkd_jax.train import loop
from mtkd_jax.train import workdir as workdir_lib
from mtkd_jax.train import writers
from tests.conftest import REPO


class FakeGCS(memory.MemoryFileSystem):
  """gs:// kept in memory (a fresh store per test)."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close
    super().__init__(*args, **kwargs)


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
  fake = types.ModuleType("gcsfs")
  fake.__spec__ = importlib.machinery.ModuleSpec("gcsfs", None)
  monkeypatch.setitem(sys.modules, "gcsfs", fake)
  FakeGCS.store, FakeGCS.pseudo_dirs = {}, [""]
  fsspec.register_implementation("gcs", FakeGCS, clobber=True)
  fsspec.register_implementation("gs", FakeGCS, clobber=True)
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.chdir(tmp_path)
  yield FakeGCS
  backend.fsspec_backend._get_filesystem.cache_clear()


def test_metric_writer_on_a_remote_workdir_writes_nothing_locally(fake_gcs, tmp_path):
  workdir = "gs://bucket/run"
  writer = writers.MetricWriter(workdir, tensorboard=False)
  writer.write(1, "train", {"loss": 0.5})
  writer.write(2, "train", {"loss": 0.25})
  writer.close()
  resumed = writers.MetricWriter(workdir, resume_step=1, tensorboard=False)
  resumed.write(2, "train", {"loss": 0.125})
  assert [r["loss"] for r in writers.read_metrics(workdir)] == [0.5, 0.125]
  assert [k.split("bucket/")[-1] for k in fake_gcs.store] == ["run/metrics.jsonl"]
  assert not list(tmp_path.iterdir())  # no ./gs:/bucket/run


def test_local_paths_are_absolute_and_remote_kept(fake_gcs):
  del fake_gcs
  assert paths.workdir("run").is_absolute()
  assert str(paths.workdir("gs://bucket/run")) == "gs://bucket/run"


def test_missing_backend_or_unknown_scheme_named():
  if paths.importlib.util.find_spec("gcsfs") is None:
    with pytest.raises(errors.ConfigError, match="pip install gcsfs"):
      paths.workdir("gs://bucket/run")
  with pytest.raises(errors.ConfigError, match="Unsupported path scheme memory://"):
    paths.workdir("memory://run")


def test_cli_stops_with_one_line_and_writes_nothing(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.run",
       f"--config={REPO}/configs/synthetic_mmoe.py:smoke",
       "--workdir=memory://bucket/run"],
      cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "PATH": "/usr/bin:/bin"})
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: Unsupported path scheme memory://")
  assert not list(tmp_path.iterdir())


def remote_files(fake, prefix="bucket/"):
  return sorted(k.split(prefix, 1)[-1] for k in fake.store)


def test_workdir_claim_on_a_remote_workdir_writes_nothing_locally(fake_gcs,
                                                                  tmp_path):
  config = synthetic_mmoe.get_config("smoke")
  with workdir_lib.claim("gs://bucket/run", config):
    assert remote_files(fake_gcs) == ["run/LOCK", "run/config.json"]
    with pytest.raises(errors.WorkdirError, match="in use by process"):
      workdir_lib.acquire_lock("gs://bucket/run")
  assert remote_files(fake_gcs) == ["run/config.json"]  # the lock is released
  assert not list(tmp_path.iterdir())


def fake_train(config, workdir):
  """Stands in for `loop.train_and_evaluate` (whose Orbax arrays cannot go
  to the fake gs://): writes metrics and results.json the way it does."""
  writer = writers.MetricWriter(workdir, tensorboard=False)
  for step in (1, 2):
    writer.write(step, "train", {"loss": 1.0 / step / config.model.num_experts})
    writer.write(step, "validation", {"ctr/auc": 0.5 + 0.01 * step})
  if config.model.num_experts == 3:
    raise RuntimeError("a bug")  # its traceback goes to the sweep's logs
  results = {"best_step": 2, "validation": {"ctr/auc": 0.52},
             "test": {"ctr/auc": 0.5 + config.seed / 100}, "steps": 2,
             "select_metric": "ctr/auc"}
  paths.write_json(paths.path(workdir) / "results.json", results)
  return results


def test_ablation_sweep_and_report_on_a_remote_dir_write_nothing_locally(
    fake_gcs, tmp_path, monkeypatch):
  monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
  runs = sweeps.make_runs(sweeps.product(**{"model.num_experts": [2, 3]},
                                         seed=[0, 1]))
  config = synthetic_mmoe.get_config("smoke")
  summary = driver.run_sweep(config, runs, "gs://bucket/sweep",
                             show_progress=False)
  assert len(summary.finished) == 2 and len(summary.failed) == 2
  assert sorted(r["seed"] for r in store.read("gs://bucket/sweep")) == [0, 1]
  again = driver.run_sweep(config, runs, "gs://bucket/sweep",
                           show_progress=False)  # resumes from the store
  assert len(again.skipped) == 2
  report_path = report.write("gs://bucket/sweep")
  assert "Ablation report: sweep" in paths.path(report_path).read_text()
  files = remote_files(fake_gcs)
  assert {"sweep/results.jsonl", "sweep/sweep.json", "sweep/report/report.md",
          "sweep/report/curves.png"} <= set(files)
  assert any(f.startswith("sweep/logs/") for f in files)
  assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
  c = synthetic_mmoe.get_config("smoke")
  c.data.num_examples, c.data.num_sparse, c.data.num_dense = 1000, 4, 2
  c.model.expert_hidden, c.model.bottom_hidden = (8,), (8,)
  c.model.tower_hidden, c.train.num_devices = (4,), 1
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 2, 2, 2
  c.train.tensorboard, c.train.select_metric = False, "ctr/auc"
  workdir = str(tmp_path_factory.mktemp("paths") / "run")
  loop.train_and_evaluate(c, workdir)
  return workdir


def test_export_and_predict_to_a_remote_dir_write_nothing_locally(
    fake_gcs, tmp_path, local_run):
  written = export.export_run(local_run, "gs://bucket/export")
  assert written["export"] == "gs://bucket/export/" + export.MODEL_FILE
  summary = export.predict_files("gs://bucket/export",
                                 preds_path="gs://bucket/preds.npz", check=True)
  assert summary["max_abs_diff_vs_in_process"] <= 1e-5
  preds = paths.load_npz(paths.path("gs://bucket/preds.npz"))
  assert sorted(preds) == ["ctr", "cvr"] and preds["ctr"].shape == (8,)
  paths.save_npz(paths.path("gs://bucket/rows"), {  # ".npz" appended
      k: v[:3] for k, v in paths.load_npz(
          paths.path("gs://bucket/export/example_inputs.npz")).items()})
  three = export.predict_files("gs://bucket/export",
                               inputs_path="gs://bucket/rows.npz")
  assert three["rows"] == 3
  assert set(remote_files(fake_gcs)) == {
      "export/" + export.MODEL_FILE, "export/" + export.SIGNATURE_FILE,
      "export/example_inputs.npz", "export/example_outputs.npz",
      "preds.npz", "rows.npz"}
  signature = json.loads(paths.path("gs://bucket/export/signature.json")
                         .read_text())
  assert signature["run"] == local_run
  np.testing.assert_array_equal(paths.load_npz(paths.path("gs://bucket/rows.npz"))[
      "dense"], paths.load_npz(paths.path(
          "gs://bucket/export/example_inputs.npz"))["dense"][:3])
  assert not list(tmp_path.iterdir())
