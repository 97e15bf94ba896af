"""Collectives over the data axis that cost nothing on one device.

Inside `shard_map` / `pmap` the axis size is a Python int, so a psum over a
1-device axis can be dropped at trace time. XLA does not drop it itself: a
single-replica `all-reduce` of the MMoE gradients copies all 21 MB of them
every step (4.9 ms of an ~80 ms step on the benchmark workload (docs/benchmarks.md), measured
with `jax.profiler` on XLA:CPU). The results are identical either way.
"""
from jax import lax


def psum(x, axis_name: str):
  """`lax.psum(x, axis_name)`; `x` itself when the axis has one device."""
  if lax.axis_size(axis_name) == 1:
    return x
  return lax.psum(x, axis_name)


def all_gather_tiled(x, axis_name: str):
  """`lax.all_gather(x, axis_name, tiled=True)`; `x` on a 1-device axis."""
  if lax.axis_size(axis_name) == 1:
    return x
  return lax.all_gather(x, axis_name, tiled=True)
