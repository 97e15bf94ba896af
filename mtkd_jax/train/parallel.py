"""Runs the per-device steps data-parallel: `jax.jit` on a mesh, or `jax.pmap`.

Both modes run the same pmap-style function (explicit collectives over the
`data` axis) on each device's shard of the global batch:
  * "jit":  `jax.jit(jax.shard_map(fn, check_vma=False))` over a 1-D device
            mesh; params replicated, the batch split on its leading axis.
  * "pmap": `jax.pmap(fn, in_axes=(None, 0))`; the batch gets a leading
            device axis.
On a 2-D mesh (`train.mesh`, see `mesh.py`) "jit" is manual over `data`
only: the embedding tables stay sharded over `model` and XLA partitions
their gathers; the per-device code is unchanged.
`check_vma=False` gives shard_map pmap's semantics for `grad`: a device's
gradient is its local gradient, and the step sums them explicitly. (With
`check_vma=True` gradients of replicated params come back already summed,
so the pmap-style psum would count them N times; see STACK.md.)
"""
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd_jax import errors
from mtkd_jax.accel import native
from mtkd_jax.train import mesh as mesh_lib
from mtkd_jax.train.step import AXIS

MODES = ("jit", "pmap")


def make_mesh(num_devices: int = 0, spec: str = "") -> Mesh:
  """A 1-D mesh, axis `data` (Auto type), over every device of every host,
  or the 2-D (`data`, `model`) mesh of `spec` (`mesh.parse`).

  Args:
    num_devices: > 0 uses only the first `num_devices` devices (single-host
      only; e.g. to compare 1 and 8 devices in one process).
    spec: `train.mesh`, e.g. "data:4,model:2"; "" for 1-D.
  """
  devices = jax.devices()
  if num_devices:
    if jax.process_count() > 1:
      raise errors.ConfigError("num_devices > 0 is for single-host runs only.")
    if num_devices > len(devices):
      raise errors.ConfigError(f"num_devices={num_devices} but only {len(devices)} "
                       "devices exist.")
    devices = devices[:num_devices]
  return mesh_lib.build(devices, spec)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-host batch size; the global one must split evenly
  over the mesh's `data` axis."""
  n = mesh.shape[AXIS]
  if global_batch_size % n:
    raise errors.ConfigError(f"Batch size {global_batch_size} is not divisible by the "
                     f"{n} devices of the data axis; choose a multiple of {n}.")
  return global_batch_size // jax.process_count()


def compile_step(per_device_fn: Callable, mode: str, mesh: Mesh, *,
                 out_batched: bool, donate_state: bool, extra_args: int = 0):
  """Compiles `per_device_fn(replicated, batch_shard, *replicated_extras)`.

  Args:
    per_device_fn: pmap-style function of (replicated arg, batch shard).
    mode: "jit" or "pmap".
    mesh: the device mesh (jit mode).
    out_batched: True if the outputs are per-example (split like the batch),
      False if they are replicated (states, global scalars).
    donate_state: donate the first argument's buffers.
    extra_args: the number of further replicated arguments (e.g. frozen
      teacher params; never donated).
  """
  donate = (0,) if donate_state else ()
  if mode == "jit":
    out_spec = P(AXIS) if out_batched else P()
    fn = jax.shard_map(_sharded_tables_ok(per_device_fn, mesh), mesh=mesh,
                       in_specs=(P(), P(AXIS)) + (P(),) * extra_args,
                       out_specs=out_spec, axis_names={AXIS}, check_vma=False)
    return jax.jit(fn, donate_argnums=donate)
  if mesh_lib.model_size(mesh) > 1:
    raise errors.ConfigError("A mesh with a model axis needs parallel mode "
                             "'jit'.")
  if mode == "pmap":
    fn = jax.pmap(per_device_fn, axis_name=AXIS,
                  in_axes=(None, 0) + (None,) * extra_args,
                  out_axes=0 if out_batched else None, donate_argnums=donate,
                  devices=list(mesh.devices.flat))
    if not out_batched:
      return fn
    def flat(*args):
      return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), fn(*args))
    return flat
  raise errors.ConfigError(f"Unknown parallel mode {mode!r}; valid: {', '.join(MODES)}.")


def _sharded_tables_ok(per_device_fn: Callable, mesh: Mesh) -> Callable:
  """`per_device_fn`, traced without the native CPU kernels when the mesh
  shards the tables: XLA cannot partition a custom call, so it would gather
  a whole table onto every device for one."""
  if mesh_lib.model_size(mesh) == 1:
    return per_device_fn

  def fn(*args):
    with native.off():
      return per_device_fn(*args)
  return fn


def shard_batch(local_batch: dict, mode: str, mesh: Mesh) -> dict:
  """Host numpy batch (this host's rows) -> device arrays for `mode`.

  jit: one global array per column, split over all devices of all hosts.
  pmap: this host's rows reshaped to [local_devices, rows_per_device, ...]
  (pmap itself runs over the mesh's devices).
  The transfer is asynchronous, so calling this ahead of use prefetches.
  """
  if mode == "jit":
    sharding = NamedSharding(mesh, P(AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in local_batch.items()}
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  n = len(local)
  sharding = NamedSharding(Mesh(np.asarray(local), (AXIS,)), P(AXIS))
  return {k: jax.device_put(v.reshape((n, v.shape[0] // n) + v.shape[1:]),
                            sharding)
          for k, v in local_batch.items()}


def replicate(tree, mesh: Mesh):
  """Copies a host pytree onto every device of `mesh` (fresh buffers, so
  donating the result never deletes the caller's arrays)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.device_put(np.array(x), sharding), tree)
