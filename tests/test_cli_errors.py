"""Every user error of `python -m experiments.run` stops with one `error:`
line that says what to fix, and no traceback (tracebacks are for bugs).

Each case fails before any training step, so each subprocess takes the
import time of JAX plus a config load (a few seconds).
"""
import contextlib
import os
import subprocess
import sys

import pytest

from mtkd_jax import cli
from tests.conftest import REPO

SMOKE = "--config=configs/synthetic_mmoe.py:smoke"


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "experiments.run", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=env)


def assert_one_error_line(out, *fragments):
  assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), out.stderr[-3000:]
  for fragment in fragments:
    assert fragment in last, last


@pytest.mark.parametrize("args,fragments", [
    ((SMOKE, "--config.train.batch_sise=64"),
     ("--config.train.batch_sise", "did you mean 'batch_size'")),
    ((SMOKE, "--config.tasks.ctrr.loss=bce"),
     ("config.tasks has no key 'ctrr'", "did you mean 'ctr'")),
    (("--config=configs/no_such_experiment.py",),
     ("configs/no_such_experiment.py", "No such file")),
    (("--config=configs/synthetic_mmoe.py:smok",),
     ("Unknown config argument 'smok'; valid: smoke",)),
    ((SMOKE, "--config.train.batch_size=0"),
     ("train.batch_size must be >= 1", "--config.train.batch_size=")),
    ((SMOKE, "--config.train.batch_size=-1"),
     ("train.batch_size must be >= 1", "got -1")),
    ((SMOKE, "--config.train.num_epochs=0"),
     ("num_epochs and train.num_steps are both 0",)),
    ((SMOKE, "--config.train.num_steps=-5"),
     ("train.num_steps must be >= 0", "got -5")),
    ((SMOKE, "--config.train.log_every=0"),
     ("train.log_every must be >= 1",)),
    ((SMOKE, "--config.optimizer.learning_rate=-1e-3"),
     ("optimizer.learning_rate must be >= 0",)),
    ((SMOKE, "--config.train.batch_size=abc"),
     ("--config.train.batch_size=abc", "invalid literal for int()")),
], ids=["misspelt_key", "unknown_task", "missing_config_file", "bad_config_arg",
        "batch_size_0", "batch_size_negative", "num_epochs_0", "num_steps_negative",
        "log_every_0", "learning_rate_negative", "not_an_int"])
def test_bad_flags_stop_with_one_line(tmp_path, args, fragments):
  workdir = tmp_path / "w"
  assert_one_error_line(run_cli(*args, f"--workdir={workdir}"), *fragments)
  assert not (workdir / "config.json").exists()


def test_config_file_with_a_syntax_error(tmp_path):
  bad = tmp_path / "broken.py"
  bad.write_text("def get_config(:\n  pass\n")
  out = run_cli(f"--config={bad}", f"--workdir={tmp_path / 'w'}")
  assert_one_error_line(out, "does not parse", "broken.py, line 1")


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "f").write_text("")
  out = run_cli(SMOKE, f"--workdir={tmp_path / 'f'}")
  assert_one_error_line(out, "is a file", "--workdir")


@contextlib.contextmanager
def read_only(directory):
  """`directory` made unwritable: chmod for a user, chattr +i for root."""
  if os.geteuid() != 0:
    directory.chmod(0o555)
    try:
      yield
    finally:
      directory.chmod(0o755)
    return
  if subprocess.run(["chattr", "+i", str(directory)],
                    capture_output=True).returncode != 0:
    pytest.skip("running as root where chattr +i is unavailable")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_read_only_workdir(tmp_path):
  workdir = tmp_path / "ro"
  workdir.mkdir()
  with read_only(workdir):
    out = run_cli(SMOKE, f"--workdir={workdir}")
  assert_one_error_line(out, "is not writable", "--workdir")


def test_bugs_keep_their_traceback():
  assert cli.flag_error_line(KeyError("x"), ["run", SMOKE]) is None
  assert cli.flag_error_line(NameError("x"), ["run", SMOKE]) is None
  assert cli.disk_error_line(OSError(2, "No such file")) is None
  assert "No space left" in cli.disk_error_line(
      OSError(28, "No space left on device", "/w/metrics.jsonl"))
