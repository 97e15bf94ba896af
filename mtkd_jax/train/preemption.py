"""Preemption: SIGTERM or SIGINT saves a checkpoint at the next step boundary.

Spot VMs and cluster schedulers send SIGTERM some seconds before they kill a
run; Ctrl-C sends SIGINT. Either way the loop finishes the step in progress,
saves the latest checkpoint at that step (so a restart recomputes nothing),
and stops with `Preempted`, which `experiments.run` turns into one log line
and exit status 0. The same command resumes the run.

  * Single process: a Python signal handler sets a flag that the loop reads
    at each step boundary.
  * Multi-host: every host must stop at the same step, so the decision is
    JAX's preemption sync point (`multihost_utils.reached_preemption_sync_
    point`, the mechanism Orbax's CheckpointManager uses): the coordination
    service, told of a SIGTERM on any host, names one step at which all hosts
    see True. SIGINT is forwarded as a SIGTERM to the same service.
"""
import os
import signal
import threading

from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run saved a checkpoint at `step` and stopped on a signal."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f"Preempted: saved step {step} in {workdir}; the same "
                     "command resumes from it.")
    self.step = step
    self.workdir = workdir


class Watcher:
  """Catches SIGTERM / SIGINT from construction until `close()`.

  Args:
    multihost: decide through JAX's preemption sync point (all hosts stop at
      the same step) instead of this process's own flag.
  """

  def __init__(self, multihost: bool = False):
    self._multihost = multihost
    self.signal = None
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be set in the main thread
    for sig in SIGNALS:
      if multihost and sig == signal.SIGTERM:
        continue  # jax.distributed's preemption notifier owns SIGTERM
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum)
    if self._multihost:  # let the coordination service pick the step
      os.kill(os.getpid(), signal.SIGTERM)

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (call at every step boundary,
    on every host, with the same step)."""
    if self._multihost:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # the preemption service is off
        return self.signal is not None
    return self.signal is not None

  def close(self) -> None:
    """Restores the signal handlers that were there before."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
