"""Test set-up: 8 fake CPU devices for the multi-device tests.

`jax_num_cpu_devices` must be set before JAX creates its backend; conftest is
imported before any test module runs JAX code.
"""
import fcntl
import os
import pathlib

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: minutes of CPU; runs only with MTKD_RUN_SLOW=1")


def pytest_collection_modifyitems(config, items):
  del config
  if os.environ.get("MTKD_RUN_SLOW") == "1":
    return
  skip = pytest.mark.skip(reason="slow; set MTKD_RUN_SLOW=1 to run")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


REPO = pathlib.Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_dir():
  if not (ML100K / "u.data").exists():
    pytest.skip(f"MovieLens-100K not found at {ML100K} (licensed data, not "
                "in the repository).")
  return ML100K


@pytest.fixture(scope="session")
def ml100k_tfds_dir(tmp_path_factory, ml100k_dir):
  """One TFDS preparation of the real MovieLens-100K (about 20 s of CPU) for
  the whole run: the first xdist worker prepares it under a file lock in the
  temp root all workers share; the others wait for it and reuse it."""
  from mtkd_jax.data import movielens  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # this run's temp root, shared by its workers
  tfds_dir = root / "ml100k_tfds"
  with open(root / "ml100k_tfds.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    movielens._prepare(str(ml100k_dir), str(tfds_dir))  # pylint: disable=protected-access
  return tfds_dir
