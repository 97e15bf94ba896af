"""Serving export: jax.export round trip equals the in-process model."""
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic_mmoe
from mtkd_jax import data as data_lib
from mtkd_jax import errors
from mtkd_jax import export
from mtkd_jax.accel import native
from mtkd_jax.data import pipeline
from mtkd_jax.distill import teacher as teacher_lib
from mtkd_jax.train import loop
from mtkd_jax.train import trainer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  c = synthetic_mmoe.get_config("smoke")
  c.data.num_examples = 2000
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 6, 6, 6
  c.train.tensorboard = False
  c.train.select_metric = "ctr/auc"
  workdir = str(tmp_path_factory.mktemp("export") / "run")
  loop.train_and_evaluate(c, workdir)
  return workdir, c


def test_export_scores_any_batch_like_the_in_process_model(run_dir, tmp_path):
  workdir, config = run_dir
  out = str(tmp_path / "export")
  written = export.export_run(workdir, out)
  assert set(written) >= {"export", "signature"}
  exported, signature = export.load(out)
  assert set(signature["inputs"]) == {"sparse", "dense"}
  # portable: the XLA forms, not this process's native kernels (whose
  # custom call in-process apply does use on CPU)
  assert native.GATHER_CONCAT not in exported.mlir_module()
  exp = trainer.setup(config)
  params = teacher_lib.restore_params(workdir)
  rows = next(pipeline.eval_batches(exp.splits.test, 37))
  inputs = {k: v for k, v in rows.items() if export.is_input(k)}
  got = export.predict(exported, signature, inputs)
  want = exp.model.apply({"params": params}, inputs, train=False)[0]
  for task in ("ctr", "cvr"):
    assert got[task].shape == (37,)
    np.testing.assert_allclose(got[task], np.asarray(want[task]), rtol=1e-5,
                               atol=1e-6)
  with pytest.raises(errors.DataError, match="dense"):
    export.predict(exported, signature, {"sparse": inputs["sparse"]})
  with pytest.raises(errors.DataError, match="dtype"):
    export.predict(exported, signature,
                   {**inputs, "sparse": inputs["sparse"].astype(np.int64)})
  with pytest.raises(errors.DataError, match="rows"):
    export.predict(exported, signature,
                   {**inputs, "dense": inputs["dense"][:5]})


def test_export_and_predict_commands(run_dir, tmp_path):
  workdir, _ = run_dir
  out = str(tmp_path / "export")
  subprocess.run([sys.executable, "-m", "experiments.export", "--workdir",
                  workdir, "--out", out], cwd=REPO, check=True,
                 capture_output=True)
  done = subprocess.run([sys.executable, "-m", "experiments.predict",
                         "--export", out, "--check", "--out",
                         str(tmp_path / "p.npz")], cwd=REPO,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "max_abs_diff_vs_in_process" in done.stdout
  with np.load(tmp_path / "p.npz") as f:
    assert set(f.files) == {"ctr", "cvr"}


def test_multi_platform_export_from_the_workdir_alone(tmp_path, monkeypatch):
  """Trained on a sharded mesh, exported for cpu+cuda+tpu with no data set
  reachable (loading one fails): the cpu artefact scores like the model."""
  c = synthetic_mmoe.get_config("smoke")
  c.data.num_examples = 1000
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 2, 2, 2
  c.train.tensorboard, c.train.select_metric = False, "ctr/auc"
  c.train.mesh = "model:2"
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(c, workdir)
  exp = trainer.setup(c)  # the model and rows to compare with
  rows = next(pipeline.eval_batches(exp.splits.test, 21))
  inputs = {k: v for k, v in rows.items() if export.is_input(k)}

  def no_data(*args, **kwargs):
    raise AssertionError("the export loaded the data set")
  monkeypatch.setattr(data_lib, "load_dataset", no_data)
  out = str(tmp_path / "export")
  export.export_run(workdir, out, platforms=("cpu", "cuda", "tpu"))
  exported, signature = export.load(out)
  assert tuple(exported.platforms) == ("cpu", "cuda", "tpu")
  assert signature["platforms"] == ["cpu", "cuda", "tpu"]
  params = teacher_lib.restore_params(workdir)
  got = export.predict(exported, signature, inputs)
  want = exp.model.apply({"params": params}, inputs, train=False)[0]
  for task in ("ctr", "cvr"):
    np.testing.assert_allclose(got[task], np.asarray(want[task]), rtol=1e-5,
                               atol=1e-6)
  with pytest.raises(errors.ConfigError, match="valid: cpu, cuda, rocm, tpu"):
    export.export_run(workdir, out, platforms=("gpu",))
