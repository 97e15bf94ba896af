"""End to end: `experiments.run` and `train_and_evaluate` on smoke configs,
and the one-line errors for bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import config_flags  # noqa: F401  (loads configs like the CLI)

from configs import movielens_mmoe
from configs import synthetic_mmoe
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.train import loop
from mtkd_jax.train import writers
from tests.conftest import REPO
from tests.conftest import ci_subset


def run_cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.run", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("model", ci_subset(["mmoe", "shared_bottom"],
                                            keep=["mmoe"]))
def test_synthetic_smoke_trains_and_reports_bayes_auc(tmp_path, model):
  config = synthetic_mmoe.get_config("smoke")
  config.model.name = model
  results = train.train_and_evaluate(config, str(tmp_path))
  test = results["test"]
  for task in ("ctr", "cvr"):
    assert 0.0 <= test[f"{task}/auc"] <= 1.0
    assert test[f"{task}/bayes_auc"] > 0.7
  assert results["steps"] == 38
  assert json.loads((tmp_path / "results.json").read_text()) == json.loads(
      json.dumps(results))
  records = writers.read_metrics(str(tmp_path))
  train_records = [r for r in records if r["split"] == "train"]
  assert {"loss", "loss/ctr", "loss/cvr", "grad_norm", "param_norm",
          "examples_per_sec"} <= set(train_records[-1])
  # The loss falls over training.
  assert train_records[-1]["loss"] < train_records[0]["loss"]
  assert (tmp_path / "config.json").exists()
  assert list((tmp_path / "tensorboard").iterdir())
  if model == "mmoe":  # expert diagnostics: gate means per task sum to one
    gates = [v for k, v in test.items() if k.startswith("gates/ctr/")]
    assert len(gates) == 3 and abs(sum(gates) - 1.0) < 1e-5


@pytest.mark.slow  # minutes of CI; MTKD_RUN_SLOW=1 runs it
def test_synthetic_pmap_mode_matches_jit(tmp_path):
  """Same run under pmap on all 8 fake devices and under jit/shard_map."""
  results = {}
  for mode in ("jit", "pmap"):
    config = synthetic_mmoe.get_config("smoke")
    config.train.parallel = mode
    config.train.num_steps = 10
    results[mode] = train.train_and_evaluate(config, str(tmp_path / mode))
  for key, value in results["jit"]["test"].items():
    np.testing.assert_allclose(results["pmap"]["test"][key], value, rtol=1e-4,
                               err_msg=key)


def test_movielens_smoke(tmp_path, ml100k_dir, ml100k_tfds_dir):
  config = movielens_mmoe.get_config("smoke")
  config.data.data_dir = str(ml100k_dir)
  config.data.tfds_dir = str(ml100k_tfds_dir)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  test = results["test"]
  assert test["rating/rmse"] > 0
  assert 0 <= test["like/auc"] <= 1 and 0 <= test["like/gauc"] <= 1


def test_cli_runs_and_prints_test_metrics(tmp_path):
  out = run_cli("--config=configs/synthetic_mmoe.py:smoke",
                f"--workdir={tmp_path}", "--config.train.num_steps=6")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ctr: auc=" in out.stdout and "bayes_auc=" in out.stdout


def test_misspelt_config_key_names_it(tmp_path):
  out = run_cli("--config=configs/synthetic_mmoe.py:smoke",
                f"--workdir={tmp_path}", "--config.train.batch_sise=64")
  assert out.returncode != 0
  assert "batch_sise" in out.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.model.name=mmeo", "Unknown model 'mmeo'; valid names: aitm, cross_stitch"),
    ("--config.tasks.ctr.loss=bse", "Unknown loss 'bse'; valid names: bce"),
    ("--config.data.name=criteo", "Unknown dataset 'criteo'; valid names:"),
    ("--config.train.select_metric=ctr/acc", "select_metric 'ctr/acc' is not a validation metric"),
])
def test_bad_names_stop_with_one_line(tmp_path, override, message):
  out = run_cli("--config=configs/synthetic_mmoe.py:smoke",
                f"--workdir={tmp_path}", "--config.train.num_steps=2", override)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_missing_data_dir_says_what_to_pass(tmp_path):
  out = run_cli("--config=configs/movielens_mmoe.py:smoke",
                f"--workdir={tmp_path / 'w'}",
                f"--config.data.data_dir={tmp_path / 'nothing'}",
                f"--config.data.tfds_dir={tmp_path / 'tfds'}")
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert "u.data" in last and "--config.data.data_dir" in last, last


def test_sparse_id_beyond_vocab_names_field_and_row(tmp_path, monkeypatch):
  from mtkd_jax.data import synthetic
  original = synthetic.load_synthetic_ctr

  def corrupted(cfg):
    splits = original(cfg)
    splits.validation["sparse"][7, 3] = cfg.vocab_size  # one past the end
    return splits

  monkeypatch.setattr(synthetic, "load_synthetic_ctr", corrupted)
  with pytest.raises(errors.DataError,
                     match=r"validation: field 'C3' row 7 has id 500 outside \[0, 500\)"):
    train.train_and_evaluate(synthetic_mmoe.get_config("smoke"), str(tmp_path))


def test_nan_loss_names_step_and_task(tmp_path):
  config = synthetic_mmoe.get_config("smoke")
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 1e30
  with pytest.raises(errors.NonFiniteLossError,
                     match=r"Non-finite loss at step \d+: task '(ctr|cvr)'"):
    train.train_and_evaluate(config, str(tmp_path))


def test_check_finite_reports_the_first_bad_step():
  good = {"loss": 1.0, "loss/a": 0.5, "loss/b": 0.5}
  bad = {"loss": np.nan, "loss/a": 0.5, "loss/b": np.inf}
  with pytest.raises(errors.NonFiniteLossError, match="step 12: task 'b'"):
    loop.check_finite([good, good, bad, bad], 10, ("a", "b"))
  loop.check_finite([good], 1, ("a", "b"))


def test_weighting_method_by_one_override_in_pmap_mode(tmp_path):
  out = run_cli("--config=configs/synthetic_mmoe.py:smoke", f"--workdir={tmp_path}",
                "--config.train.num_steps=6", "--config.weighting.name=pcgrad",
                "--config.train.parallel=pmap", "--config.train.log_every=3")
  assert out.returncode == 0, out.stderr[-3000:]
  train_records = [r for r in writers.read_metrics(str(tmp_path))
                   if r["split"] == "train"]
  assert "weight/ctr" in train_records[-1] and "weight/cvr" in train_records[-1]


def test_gradient_diagnostics_logged(tmp_path):
  config = synthetic_mmoe.get_config("smoke")
  config.train.num_steps = 8
  config.train.log_every = 4
  config.weighting.diagnostics_every = 4
  train.train_and_evaluate(config, str(tmp_path))
  last = [r for r in writers.read_metrics(str(tmp_path)) if r["split"] == "train"][-1]
  assert -1.0 <= last["grad_cos/ctr/cvr"] <= 1.0
  assert last["grad_norm/ctr"] > 0 and last["grad_norm/cvr"] > 0


def test_esmm_reports_cvr_on_clicked_rows(tmp_path):
  from configs import synthetic_esmm  # pylint: disable=g-import-not-at-top
  config = synthetic_esmm.get_config("smoke")
  config.train.num_steps = 6
  results = train.train_and_evaluate(config, str(tmp_path))
  test = results["test"]
  assert 0.0 <= test["cvr/auc_clicked"] <= 1.0
  assert test["cvr/logloss_clicked"] > 0
  assert "ctcvr/auc" in test and "ctr/auc" in test
