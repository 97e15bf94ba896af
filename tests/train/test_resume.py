"""A run killed with SIGKILL and started again ends exactly like an
uninterrupted run: same validation history, same best step, same test
metrics (bit-for-bit: CPU XLA is deterministic for a fixed program)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from tests.conftest import REPO

OVERRIDES = ["--config.train.num_steps=400", "--config.train.checkpoint_every=20",
             "--config.train.eval_every=40", "--config.train.log_every=20",
             "--config.train.tensorboard=False"]


def command(workdir):
  return [sys.executable, "-m", "experiments.run",
          "--config=configs/synthetic_mmoe.py:smoke", f"--workdir={workdir}",
          *OVERRIDES]


def env():
  e = dict(os.environ)
  e.pop("XLA_FLAGS", None)
  e["JAX_PLATFORMS"] = "cpu"
  return e


def completed_checkpoints(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  if not d.exists():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def validation_history(workdir):
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if r["split"] in ("validation", "test")]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(command(straight), cwd=REPO, env=env(), check=True,
                 capture_output=True)

  proc = subprocess.Popen(command(killed), cwd=REPO, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not any(s >= 60 for s in completed_checkpoints(killed)):
    assert proc.poll() is None, "run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  resumed_from = max(completed_checkpoints(killed))
  assert 60 <= resumed_from < 400, resumed_from
  assert not (killed / "results.json").exists()

  subprocess.run(command(killed), cwd=REPO, env=env(), check=True,
                 capture_output=True)
  a = json.loads((straight / "results.json").read_text())
  b = json.loads((killed / "results.json").read_text())
  for r in (a, b):  # wall-clock timing differs between runs
    r["model"].pop("latency_ms_per_batch")
  assert a == b
  assert validation_history(straight) == validation_history(killed)
  assert a["steps"] == 400
