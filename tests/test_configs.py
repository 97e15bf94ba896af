"""Every config: docstring starts with its run command; smoke runs train."""
import pathlib

import pytest
from ml_collections import config_flags

from mtkd_jax import train
from tests.conftest import REPO
from tests.conftest import ci_subset

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py")
                 if p.name != "__init__.py")
NEEDS_DATA_DIR = {"movielens_mmoe.py",  # smoke-tested in test_run.py
                  "census_mmoe.py", "aliccp_mmoe.py", "aliexpress_mmoe.py",
                  "movielens_latest_mmoe.py",  # and in tests/data/test_*.py
                  "movielens_1m_mmoe.py",  # on fake ml-1m files there
                  "movielens_sequence.py",  # tests/models/test_sequence.py
                  "movielens_multiclass.py",  # tests/test_task_kinds.py
                  "movielens_retrieval.py",
                  "movielens_esmm.py",  # below
                  "movielens_kd.py", "census_kd.py"}  # tests/distill


def load(path, arg=None):
  return config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      "config", str(path)).get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_docstring_starts_with_its_command(path):
  module = config_flags.config_flags._LoadConfigModule("config", str(path))  # pylint: disable=protected-access
  first = module.__doc__.strip().splitlines()[0]
  assert first.startswith("python -m experiments.run --config "
                          f"configs/{path.name} ")
  assert "--workdir" in first


# Architectures whose model tests (tests/models) and whose runs elsewhere
# cover them train their smoke config with MTKD_RUN_SLOW=1 only.
SMOKE_SLOW = {"mmoe_synthetic.py",  # the study config; synthetic_mmoe.py runs
              "synthetic_aitm.py",  # AITM trains in the like/love funnel test
              "synthetic_omoe.py", "synthetic_cross_stitch.py",
              "synthetic_dselect_k.py",
              # one data-set run each in tests/test_new_architectures_data.py
              "synthetic_escm2.py", "synthetic_stem.py",
              "synthetic_metaheac.py"}
SMOKE = [p for p in CONFIGS if p.name not in NEEDS_DATA_DIR]


@pytest.mark.parametrize("path", ci_subset(
    SMOKE, [p for p in SMOKE if p.name not in SMOKE_SLOW]),
                         ids=lambda p: p.name)
def test_smoke_config_trains(path, tmp_path):
  config = load(path, "smoke")
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["test"] and results["best_step"] > 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_unknown_config_arg_is_rejected(path):
  with pytest.raises(ValueError, match="valid: smoke"):
    load(path, "smok")


@pytest.mark.parametrize("model", ["esmm", "aitm"])
def test_movielens_esmm_trains_on_the_like_love_funnel(model, tmp_path,
                                                       ml100k_dir,
                                                       ml100k_tfds_dir):
  config = load(REPO / "configs" / "movielens_esmm.py", "smoke")
  config.data.data_dir = str(ml100k_dir)
  config.data.tfds_dir = str(ml100k_tfds_dir)
  config.model.name = model
  config.train.num_steps = 8
  results = train.train_and_evaluate(config, str(tmp_path))
  test = results["test"]
  assert results["best_step"] > 0
  for task in ("like", "love"):
    assert 0.0 <= test[f"{task}/auc"] <= 1.0
  assert "rating/rmse" not in test
  # ESMM's CVR tower, p(love | like), is scored on the liked rows only.
  assert ("cvr/auc_clicked" in test) == (model == "esmm")
  if model == "esmm":
    assert 0.0 <= test["cvr/auc_clicked"] <= 1.0


def test_funnel_sweep_fits_configs_movielens_esmm():
  from mtkd_jax import sweeps  # pylint: disable=g-import-not-at-top
  runs = sweeps.load_sweep(
      str(REPO / "configs" / "sweeps" / "architectures.py") + ":funnel")
  assert {r.overrides["model.name"] for r in runs} == {
      "single_task", "shared_bottom", "mmoe", "esmm", "aitm"}
  assert len(runs) == 5 * len(sweeps.DEFAULT_SEEDS)  # five models
  sweeps.validate(sweeps.load_config(
      str(REPO / "configs" / "movielens_esmm.py")), runs)
