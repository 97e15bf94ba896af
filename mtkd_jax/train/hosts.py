"""Multi-host start-up: `jax.distributed.initialize` from the config.

A run is multi-host when `train.distributed` is True or any of
`train.coordinator_address`, `train.num_processes`, `train.process_id` is
set. On a TPU pod slice (or under SLURM / Open MPI) `initialize()` with no
arguments finds the coordinator, process count and id itself; hand-launched
runs (localhost, GPU hosts without a cluster manager) pass all three:

  python -m experiments.run ... --config.train.coordinator_address=host0:1234 \
      --config.train.num_processes=2 --config.train.process_id=0   # host 0
  ... --config.train.process_id=1                                # host 1

On CPU the cross-process collectives use gloo (XLA's CPU default has none).
"""
from typing import Any, Dict

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd_jax import errors


def distributed_args(tcfg) -> Dict[str, Any]:
  """The keyword arguments for `jax.distributed.initialize` of a train config
  (empty: auto-detection); None when the run is single-process.

  Raises:
    ConfigError: only some of coordinator_address / num_processes /
      process_id are given, or the process id is out of range.
  """
  given = {"coordinator_address": tcfg.get("coordinator_address", ""),
           "num_processes": tcfg.get("num_processes", 0),
           "process_id": tcfg.get("process_id", -1)}
  is_set = {"coordinator_address": bool(given["coordinator_address"]),
            "num_processes": given["num_processes"] > 0,
            "process_id": given["process_id"] >= 0}
  if not any(is_set.values()):
    return {} if tcfg.distributed else None
  if not all(is_set.values()):
    missing = [f"train.{k}" for k, v in is_set.items() if not v]
    raise errors.ConfigError(
        "A hand-launched multi-host run needs train.coordinator_address, "
        "train.num_processes and train.process_id together; missing: "
        f"{', '.join(missing)} (give none of them to auto-detect on a TPU pod).")
  if not 0 <= given["process_id"] < given["num_processes"]:
    raise errors.ConfigError(
        f"train.process_id={given['process_id']} is not in "
        f"[0, train.num_processes={given['num_processes']}).")
  return given


def initialize(tcfg) -> bool:
  """Starts `jax.distributed` if the train config asks for it (idempotent).

  Returns:
    True if the run is multi-host.
  """
  args = distributed_args(tcfg)
  if args is None:
    return False
  if not jax.distributed.is_initialized():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
  return True


def as_global(tree, mesh: Mesh):
  """The tree with every host-local replicated array made a global array
  replicated over `mesh` (zero copy: the same device buffers).

  `jax.pmap`'s unbatched outputs are host-local on a multi-host run (each
  process holds its own devices' copies), which Orbax cannot save; the
  global view of the same buffers it can. Single-process runs and arrays
  that are already global come back unchanged.
  """
  if jax.process_count() == 1:
    return tree
  sharding = NamedSharding(mesh, P())

  def one(x):
    if not isinstance(x, jax.Array) or not x.is_fully_addressable:
      return x
    return jax.make_array_from_single_device_arrays(
        x.shape, sharding, [s.data for s in x.addressable_shards])
  return jax.tree.map(one, tree)
