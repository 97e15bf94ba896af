"""Every config: docstring starts with its run command; smoke runs train."""
import pathlib

import pytest
from ml_collections import config_flags

from mtkd_jax import train
from tests.conftest import REPO

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py")
                 if p.name != "__init__.py")
NEEDS_DATA_DIR = {"movielens_mmoe.py",  # smoke-tested in test_run.py
                  "census_mmoe.py", "aliccp_mmoe.py", "aliexpress_mmoe.py",
                  "movielens_latest_mmoe.py",  # and in tests/data/test_*.py
                  "movielens_sequence.py",  # tests/models/test_sequence.py
                  "movielens_multiclass.py",  # tests/test_task_kinds.py
                  "movielens_retrieval.py"}


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


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name not in NEEDS_DATA_DIR],
                         ids=lambda p: p.name)
def test_smoke_config_trains(path, tmp_path):
  config = load(path, "smoke")
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["test"] and results["best_step"] > 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_unknown_config_arg_is_rejected(path):
  with pytest.raises(ValueError, match="valid: smoke"):
    load(path, "smok")
