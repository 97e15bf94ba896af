"""Workdirs through etils.epath: a remote scheme writes nothing locally; an
unsupported one stops with one line naming what to install."""
import importlib.machinery
import subprocess
import sys
import types

import fsspec
import pytest
from fsspec.implementations import memory

from mtkd_jax import errors
from mtkd_jax import paths
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
