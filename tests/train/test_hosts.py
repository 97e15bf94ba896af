"""Multi-host start-up arguments and the preemption watcher (fast, in-process)."""
import os
import signal

import ml_collections
import pytest

from mtkd_jax import errors
from mtkd_jax.train import hosts
from mtkd_jax.train import preemption


def tcfg(**kw):
  c = ml_collections.ConfigDict(dict(distributed=False, coordinator_address="",
                                     num_processes=0, process_id=-1))
  c.update(kw)
  return c


def test_single_process_by_default_and_auto_detect_when_distributed():
  assert hosts.distributed_args(tcfg()) is None
  assert hosts.distributed_args(tcfg(distributed=True)) == {}


def test_hand_launched_passes_all_three():
  args = hosts.distributed_args(tcfg(coordinator_address="h0:1234",
                                     num_processes=2, process_id=1))
  assert args == {"coordinator_address": "h0:1234", "num_processes": 2,
                  "process_id": 1}


def test_partial_or_out_of_range_settings_are_refused():
  with pytest.raises(errors.ConfigError, match="missing: train.process_id"):
    hosts.distributed_args(tcfg(coordinator_address="h0:1", num_processes=2))
  with pytest.raises(errors.ConfigError, match="not in"):
    hosts.distributed_args(tcfg(coordinator_address="h0:1", num_processes=2,
                                process_id=2))


def test_watcher_turns_sigterm_into_a_request_and_restores_handlers():
  before = signal.getsignal(signal.SIGTERM)
  watcher = preemption.Watcher()
  assert not watcher.requested(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watcher.requested(2) and watcher.signal == signal.SIGTERM
  watcher.close()
  assert signal.getsignal(signal.SIGTERM) is before
