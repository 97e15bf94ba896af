"""The device mesh, and embedding tables sharded row-wise over its model axis.

`train.mesh` chooses the mesh:
  ""                  1-D, axis `data`, over every device (the default);
  "data:4,model:2"    2-D: the batch is split over `data`, the embedding
                      tables' rows over `model` ("model:2" alone: `data` takes
                      the rest of the devices).
On a 2-D mesh the per-device step still runs data-parallel over `data`
(`jax.shard_map` manual over `data` only); `model` stays an automatic axis,
so each table is a global array whose rows live 1/M on each of the M devices
of a `model` group, and XLA (GSPMD) partitions the gathers, their scatter-add
gradients and the optimizer's row updates. Every other parameter, and the
optimizer state of the dense part, is replicated. The step computes the same
values as on a 1-D mesh (up to float32 summation order): the model axis
changes where rows live, not what is computed.

A table's rows are padded with zero rows to a multiple of the model-axis
size (arrays must split evenly; `DatasetSpec.table_row_multiple`, set by the
loop): ids never reach the padding (the data loaders refuse out-of-range
ids), so its gradient and optimizer state stay zero and the losses, norms
and predictions are those of the unpadded table. The checkpoint keeps the
padded shape; `table_row_multiple(config)` rebuilds it from the saved config.
"""
from typing import Tuple

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd_jax import errors
from mtkd_jax.models import embedding

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)
# Weighting methods that keep replicated state of every shared parameter
# (a flat [T, P] running average): a sharded table would be copied into it.
NEEDS_REPLICATED_TABLES = ("dbmtl", "moco", "excess_mtl")


def parse(spec: str, num_devices: int) -> Tuple[int, int]:
  """(data size, model size) of a `train.mesh` setting over `num_devices`.

  Raises:
    ConfigError: one line naming the bad part and the valid form.
  """
  form = "use e.g. 'data:4,model:2' or 'model:2' (empty: data-parallel only)"
  if not spec.strip():
    return num_devices, 1
  sizes = {}
  for part in spec.replace(" ", "").strip("()").split(","):
    name, sep, size = part.partition(":")
    if not sep or name not in AXES or name in sizes or not size.isdigit() \
        or int(size) < 1:
      raise errors.ConfigError(f"train.mesh={spec!r}: bad axis {part!r}; axes "
                               f"are {', '.join(AXES)} with a size >= 1; {form}.")
    sizes[name] = int(size)
  model = sizes.get(MODEL, 1)
  data = sizes.get(DATA, num_devices // model)
  if data * model != num_devices:
    raise errors.ConfigError(
        f"train.mesh={spec!r} needs data x model = {data} x {model} = "
        f"{data * model} devices, but the run has {num_devices}; {form}.")
  return data, model


def build(devices, spec: str) -> Mesh:
  """The mesh of `train.mesh` over `devices` (Auto axis types: flax's
  `nn.Embed` and numpy batches work with them, see STACK.md)."""
  data, model = parse(spec, len(devices))
  if model == 1:
    return Mesh(np.asarray(devices), (DATA,))
  return Mesh(np.asarray(devices).reshape(data, model), AXES)


def model_size(mesh: Mesh) -> int:
  """How many devices share each table's rows (1: tables replicated)."""
  return mesh.shape.get(MODEL, 1)


def check_config(config, mesh: Mesh) -> None:
  """Stops, before anything compiles, on settings a model axis cannot run."""
  if model_size(mesh) == 1:
    return
  if config.train.parallel != "jit":
    raise errors.ConfigError(
        f"train.mesh={config.train.mesh!r} shards the embedding tables, which "
        "needs train.parallel='jit' (pmap replicates every parameter).")
  if config.weighting.name in NEEDS_REPLICATED_TABLES:
    raise errors.ConfigError(
        f"Weighting method {config.weighting.name!r} keeps a replicated running "
        "average of every shared parameter, tables included: it needs "
        "replicated tables (train.mesh without a model axis).")


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def _in_table(path) -> bool:
  """Whether a state leaf at `path` belongs to an embedding table (the table
  itself, or its optimizer state: Adam's mu/nu, row Adagrad's accumulator)."""
  return any(_key(k).startswith(embedding.TABLE_PREFIXES) for k in path)


def table_row_multiple(config) -> int:
  """The model-axis size named by a run's `train.mesh` (1 if none), from its
  config alone: what its tables' rows were padded to a multiple of. For
  restoring the run's model away from its devices (export, as a teacher)."""
  for part in config.train.get("mesh", "").replace(" ", "").strip("()").split(","):
    name, _, size = part.partition(":")
    if name == MODEL and size.isdigit():
      return int(size)
  return 1


def state_shardings(tree, mesh: Mesh):
  """NamedShardings for `tree` (a train state or params): the tables and
  their per-row optimizer state split on rows over `model`, the rest
  replicated."""
  size = model_size(mesh)

  def sharding(path, x):
    shape = np.shape(x)
    if size > 1 and _in_table(path) and shape and shape[0] % size == 0:
      return NamedSharding(mesh, P(MODEL))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(sharding, tree)


def place_state(tree, mesh: Mesh):
  """Copies a host pytree onto `mesh`: tables sharded (`state_shardings`),
  the rest replicated; fresh buffers, so donating the result never deletes
  the caller's arrays."""
  return jax.tree.map(lambda x, s: jax.device_put(np.array(x), s), tree,
                      state_shardings(tree, mesh))
