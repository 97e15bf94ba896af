"""Runs `experiments.run` in subprocesses: P processes x D fake CPU devices,
joined by `jax.distributed` on localhost when P > 1."""
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import List, Sequence

from tests.conftest import REPO

# A small MMoE on the smoke data: a few seconds of compilation.
TINY = ("--config=configs/synthetic_mmoe.py:smoke",
        "--config.model.expert_hidden=(16,)", "--config.model.bottom_hidden=(16,)",
        "--config.model.tower_hidden=(4,)", "--config.train.tensorboard=False")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  return e


def launch(workdir, overrides: Sequence[str], *, processes: int = 1,
           devices: int = 4, log_dir=None) -> List[subprocess.Popen]:
  """Starts the processes of one run; their output goes to
  `<log_dir>/host<i>.log` (default: next to the workdir)."""
  log_dir = pathlib.Path(log_dir or pathlib.Path(workdir).parent)
  hosts = []
  if processes > 1:
    address = f"localhost:{free_port()}"
    hosts = [[f"--config.train.coordinator_address={address}",
              f"--config.train.num_processes={processes}",
              f"--config.train.process_id={i}"] for i in range(processes)]
  procs = []
  for i in range(processes):
    log = open(log_dir / f"{pathlib.Path(workdir).name}.host{i}.log", "ab")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.run", f"--workdir={workdir}",
         *TINY, *overrides, *(hosts[i] if hosts else [])],
        cwd=REPO, env=env(devices), stdout=log, stderr=subprocess.STDOUT))
  return procs


def wait(procs, timeout: float = 300) -> List[int]:
  deadline = time.time() + timeout
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  return codes


def run(workdir, overrides: Sequence[str], **kwargs) -> None:
  """Runs to the end; fails with the hosts' logs if any process fails."""
  codes = wait(launch(workdir, overrides, **kwargs))
  if any(codes):
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(
        pathlib.Path(workdir).parent.glob(f"{pathlib.Path(workdir).name}.host*.log")))
    raise AssertionError(f"exit codes {codes}:\n{logs}")
