"""Multi-host for real: 2 processes x 2 fake CPU devices joined by
`jax.distributed` on localhost (gloo collectives) train, evaluate across
hosts, checkpoint, are both SIGKILLed, resume, and end like 1 process x 4
devices; in both parallel modes."""
import json
import signal
import time

import numpy as np
import pytest

from mtkd_jax.data import pipeline
from tests.train import launch
from tests.train.test_resume import completed_checkpoints
from tests.train.test_resume import validation_history

STEPS = ["--config.train.num_steps=30", "--config.train.checkpoint_every=5",
         "--config.train.eval_every=10", "--config.train.log_every=5"]


def assert_same_run(a_dir, b_dir, tol=1e-5):
  a = json.loads((a_dir / "results.json").read_text())
  b = json.loads((b_dir / "results.json").read_text())
  assert a["best_step"] == b["best_step"] and a["steps"] == b["steps"] == 30
  for split in ("validation", "test"):
    for key, value in a[split].items():
      np.testing.assert_allclose(b[split][key], value, rtol=tol, atol=tol,
                                 err_msg=f"{split} {key}")
  history_a, history_b = validation_history(a_dir), validation_history(b_dir)
  assert [r["step"] for r in history_a] == [r["step"] for r in history_b]
  for ra, rb in zip(history_a, history_b):
    for key, value in ra.items():
      if key not in ("step", "split"):
        np.testing.assert_allclose(rb[key], value, rtol=tol, atol=tol, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_two_hosts_killed_and_resumed_match_one_host(tmp_path, mode):
  overrides = STEPS + [f"--config.train.parallel={mode}"]
  one = tmp_path / "one_host"
  launch.run(one, overrides, processes=1, devices=4)

  two = tmp_path / "two_hosts"
  procs = launch.launch(two, overrides, processes=2, devices=2)
  deadline = time.time() + 300
  while not any(s >= 10 for s in completed_checkpoints(two)):
    assert all(p.poll() is None for p in procs), (
        "a host ended before the kill:\n" +
        (tmp_path / "two_hosts.host0.log").read_text()[-3000:])
    assert time.time() < deadline
    time.sleep(0.005)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  assert launch.wait(procs) == [-signal.SIGKILL] * 2
  assert not (two / "results.json").exists()
  assert 10 <= max(completed_checkpoints(two)) < 30

  launch.run(two, overrides, processes=2, devices=2)
  assert_same_run(one, two)


def test_each_host_reads_only_its_share_of_each_batch():
  columns = {"x": np.arange(100), "weights": np.ones(100, np.float32)}
  per_host = [list(pipeline.train_batches(columns, 8, seed=0, process=(i, 2),
                                          start_step=3).__next__()["x"])
              for i in range(2)]
  full = pipeline.train_batches(columns, 8, seed=0, process=(0, 1),
                                start_step=3).__next__()["x"]
  assert len(per_host[0]) == len(per_host[1]) == 4
  assert per_host[0] + per_host[1] == list(full)
