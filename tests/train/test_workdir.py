"""One process per workdir, one config per run's checkpoints, and a full
disk that stops a save without losing the checkpoints before it."""
import collections
import json
import os
import subprocess
import sys

import pytest

from configs import synthetic_mmoe
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.train import checkpoint as checkpoint_lib
from mtkd_jax.train import checkpoint_integrity as integrity
from mtkd_jax.train import workdir as workdir_lib
from tests.conftest import REPO


def _config(steps=10, **train_overrides):
  config = synthetic_mmoe.get_config("smoke")
  config.train.num_steps = steps
  config.train.tensorboard = False
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_second_owner_is_refused_naming_the_first(tmp_path):
  lock = workdir_lib.acquire_lock(str(tmp_path))
  with pytest.raises(errors.WorkdirError,
                     match=rf"in use by process {os.getpid()} on "):
    workdir_lib.acquire_lock(str(tmp_path))
  os.remove(lock)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": _dead_pid()}))
  lock = workdir_lib.acquire_lock(str(tmp_path))
  assert json.loads(open(lock).read())["pid"] == os.getpid()
  os.remove(lock)


def test_second_process_stops_with_one_line(tmp_path):
  """This process holds the workdir; `experiments.run` on it stops at once."""
  lock = workdir_lib.acquire_lock(str(tmp_path))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(
      [sys.executable, "-m", "experiments.run",
       "--config=configs/synthetic_mmoe.py:smoke", f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  os.remove(lock)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and f"process {os.getpid()}" in last
  assert not (tmp_path / "metrics.jsonl").exists()


def test_lock_is_released_after_a_run_and_after_a_failure(tmp_path):
  train.train_and_evaluate(_config(2), str(tmp_path / "ok"))
  assert not (tmp_path / "ok" / workdir_lib.LOCK_FILE).exists()
  config = _config(2)
  config.model.name = "mmeo"
  with pytest.raises(errors.ConfigError):
    train.train_and_evaluate(config, str(tmp_path / "bad"))
  assert not (tmp_path / "bad" / workdir_lib.LOCK_FILE).exists()


def test_config_differences_skip_result_neutral_keys():
  saved = {"train": {"batch_size": 256, "log_every": 5, "tensorboard": True},
           "optimizer": {"learning_rate": 0.001}, "seed": 0}
  new = {"train": {"batch_size": 128, "log_every": 1, "tensorboard": False},
         "optimizer": {"learning_rate": 0.001}, "seed": 1, "extra": 2}
  assert workdir_lib.config_differences(saved, new) == [
      "extra: <absent> -> 2", "seed: 0 -> 1", "train.batch_size: 256 -> 128"]


def test_resume_with_a_result_changing_key_is_refused(tmp_path):
  config = _config(10)
  train.train_and_evaluate(config, str(tmp_path))
  saved = (tmp_path / "config.json").read_text()
  changed = _config(10, batch_size=128)
  changed.optimizer.learning_rate = 2 * config.optimizer.learning_rate
  with pytest.raises(errors.ConfigError) as e:
    train.train_and_evaluate(changed, str(tmp_path))
  message = str(e.value)
  lr = config.optimizer.learning_rate
  assert f"optimizer.learning_rate: {lr} -> {2 * lr}" in message
  assert "train.batch_size: 256 -> 128" in message
  assert "new --workdir" in message and "\n" not in message
  assert (tmp_path / "config.json").read_text() == saved  # not overwritten


def test_resume_with_result_neutral_keys_changed_is_accepted(tmp_path):
  first = train.train_and_evaluate(_config(10), str(tmp_path))
  (tmp_path / "results.json").unlink()
  again = train.train_and_evaluate(
      _config(10, log_every=1, checkpoint_every=3), str(tmp_path))
  for r in (first, again):
    r["model"].pop("latency_ms_per_batch")
  assert again == first
  assert json.loads((tmp_path / "config.json").read_text())["train"][
      "log_every"] == 1


def test_full_disk_stops_the_save_and_keeps_earlier_checkpoints(
    tmp_path, monkeypatch):
  """The disk fills after step 10's two saves (best, latest): step 20's
  save stops the run with one line; step 10's checkpoint stays good."""
  usage = collections.namedtuple("usage", "total used free")
  calls = []

  def disk_usage(path):
    calls.append(path)
    return usage(1 << 30, 0, (1 << 30) if len(calls) <= 2 else (1 << 20))

  monkeypatch.setattr(workdir_lib.shutil, "disk_usage", disk_usage)
  with pytest.raises(errors.WorkdirError, match=r"disk full: 1 MiB free"):
    train.train_and_evaluate(_config(20), str(tmp_path))
  monkeypatch.undo()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]
  assert integrity.verify(tmp_path / "checkpoints" / "10") is None
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 10
  ckpt.close()
