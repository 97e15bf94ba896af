"""SIGTERM / SIGINT at a random step: the run saves at the next step boundary,
exits 0 with one log line, and its resumption ends bit-identical to an
uninterrupted run."""
import json
import random
import re
import signal
import time

import pytest

from tests.train import launch
from tests.train.test_resume import validation_history

STEPS = ["--config.train.num_steps=60", "--config.train.checkpoint_every=1000",
         "--config.train.eval_every=20", "--config.train.log_every=1"]
SAVED = re.compile(r"Preempted: saved step (\d+)")


def train_steps(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  steps = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line being written
      continue
    if record["split"] == "train":
      steps.append(record["step"])
  return steps


def interrupt_at_random_step(workdir, sig, rng, low, high):
  """Sends `sig` once the run has logged a random step in [low, high];
  returns (last step logged before the signal, the run's log)."""
  log = workdir.parent / f"{workdir.name}.host0.log"
  log.write_text("")
  (proc,) = launch.launch(workdir, STEPS, devices=1)
  target = rng.randint(low, high)
  deadline = time.time() + 300
  while not any(s >= target for s in train_steps(workdir)):
    assert proc.poll() is None, log.read_text()[-3000:]
    assert time.time() < deadline
    time.sleep(0.002)
  last_logged = max(train_steps(workdir))
  proc.send_signal(sig)
  assert launch.wait([proc]) == [0], log.read_text()[-3000:]
  return last_logged, log.read_text()


def losses(workdir):
  return [(r["step"], r["loss"]) for r in
          map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
          if r["split"] == "train"]


@pytest.mark.slow
def test_sigterm_and_sigint_save_and_resume_bit_identical(tmp_path):
  rng = random.Random()
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  launch.run(straight, STEPS, devices=1)

  last, log = interrupt_at_random_step(stopped, signal.SIGTERM, rng, 2, 25)
  (saved,) = map(int, SAVED.findall(log))
  assert last <= saved <= last + 1, (last, saved)  # nothing lost, <= 1 step on
  assert not (stopped / "results.json").exists()

  last, log = interrupt_at_random_step(stopped, signal.SIGINT, rng,
                                       saved + 1, 50)
  assert f"Resumed from step {saved}" in log
  assert "Traceback" not in log and "KeyboardInterrupt" not in log
  (saved,) = map(int, SAVED.findall(log))
  assert last <= saved <= last + 1, (last, saved)

  launch.run(stopped, STEPS, devices=1)
  a = json.loads((straight / "results.json").read_text())
  b = json.loads((stopped / "results.json").read_text())
  for r in (a, b):  # wall-clock timing differs between runs
    r["model"].pop("latency_ms_per_batch")
  assert a == b
  assert validation_history(straight) == validation_history(stopped)
  assert losses(straight) == losses(stopped)
