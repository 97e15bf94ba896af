"""Row gradients of embedding tables: compact, exact and data-parallel.

A batch of 1024 examples with 26 sparse fields touches at most 26,624 rows of
a 260,000-row table, yet `grad` w.r.t. the table is a dense [rows, d] array
(and per-term gradient methods get T of them). The step's row-gradient path
(`train.embedding_grads="rows"`) instead differentiates w.r.t. the rows
FeatureEmbedding gathers (its `LOOKUP_ROWS` perturbations) with the tables
held constant, and gathers those row gradients into one compact gradient per
table:

  RowGrad(ids int32[U], grads float32[..., U, d]),  U = min(N, rows),

where N counts the table's lookups in the GLOBAL batch (every site, every
device). `ids` are the rows the global batch touches, each once (in order of
first occurrence, or ascending for tables of more than 64 rows per lookup:
`unique_slots`), then `rows` (out of range) in the unused slots; `grads[..., u, :]` is row
ids[u]'s gradient summed over every lookup of it on every device (zeros in
unused slots). Every device holds the same RowGrad: the ids are all-gathered
over the `data` axis, made unique at the static size U, and each device's
row gradients are segment-summed into that layout and `psum`med.

On CPU, `compact` finds the distinct rows and sums their gradients in one
native pass (accel/native/compact_rows.cc; the same values as the XLA
form, bit for bit) where `unique_slots` would take its "map" method.

Exactness. The dense gradient is `zeros.at[ids].add(grads, mode="drop")`
(`densify`), and every row outside `ids` has zero gradient there. So inner
products, norms and linear combinations computed on the compact layout equal
those of the dense gradients (up to float summation order): the Gram
matrices, coefficients and combinations of every gradient-level weighting
method are unchanged. Lookups that touch no row (-1 ids of multi-hot and
sequence padding) and the lookups of zero-weight (padding) examples carry
exactly zero gradient and are dropped from `ids`.
"""
from typing import Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax import lax

from mtkd_jax.accel import native
from mtkd_jax.models import embedding
from mtkd_jax.train import collectives
from mtkd_jax.train import gradients

Path = Tuple[str, ...]


class RowGrad(NamedTuple):
  # int32[U]: distinct touched rows, then `rows` (out of range); None: `grads`
  # is a dense [rows, d] gradient (`all_rows`, for optimizers that accept it)
  ids: Optional[jax.Array]
  grads: jax.Array  # float32[..., U, d]: zeros in the out-of-range slots


def lookup_shapes(model, params, batch, rng):
  """(ids shapes, zero row perturbations) of one apply in train mode.

  Returns:
    ({table path: (ShapeDtypeStruct of site k's ids, ...)}, the
    `LOOKUP_ROWS` collection as zeros, to pass to `apply`).
  """
  def run(p):
    return model.apply({"params": p}, batch, train=True, rngs={"dropout": rng},
                       mutable=[embedding.LOOKUP_IDS, embedding.LOOKUP_ROWS])[1]
  shapes = jax.eval_shape(run, params)
  ids = shapes.get(embedding.LOOKUP_IDS, {})
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       shapes.get(embedding.LOOKUP_ROWS, {}))
  return flatten_sites(ids), zeros


def flatten_sites(ids_collection) -> Dict[Path, tuple]:
  """The sown `LOOKUP_IDS` collection -> {table path: (ids of site k, ...)}."""
  return traverse_util.flatten_dict(
      ids_collection, is_leaf=lambda _, v: isinstance(v, tuple))


def _key(path) -> Path:
  return tuple(str(getattr(k, "key", k)) for k in path)


def split(params, paths):
  """(tables {path: [rows, d]}, the other params with None at the tables)."""
  paths = set(paths)
  tables = {}

  def take(path, x):
    if _key(path) in paths:
      tables[_key(path)] = x
      return None
    return x

  rest = jax.tree_util.tree_map_with_path(take, params)
  return tables, rest


def merge(tables, rest):
  """The inverse of `split`: `rest` with the leaves at the paths of
  `tables` (None or not) replaced by the tables'."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: tables.get(_key(p), x), rest, is_leaf=lambda x: x is None)


# unique_slots finds distinct ids with a [rows] int32 map when the table has
# at most this many rows per id, else by sorting the ids (XLA:CPU's sort is
# slow; the map stays O(ids) + O(rows)).
MAP_ROWS_PER_ID = 64


def unique_slots(ids: jax.Array, size: int, fill: int, method: str = "auto"):
  """The distinct values of `ids` at a static size, and each id's slot.

  Args:
    ids: int32[N], values in [0, fill], `fill` marking positions to ignore.
    size: U >= the number of distinct values below `fill`.
    fill: the out-of-range value (a table's row count).
    method: "sort" (values ascending; O(N log N)), "map" (values in order of
      first occurrence, via an int32[fill + 1] map of each value's first
      position; O(N + fill)), or "auto": "map" iff fill <= MAP_ROWS_PER_ID * N.
  Returns:
    (uniq int32[U]: the distinct values below `fill`, each once, then `fill`;
     slot int32[N]: uniq[slot[i]] == ids[i] wherever ids[i] < fill).
  """
  n = ids.shape[0]
  if method == "auto":
    method = "map" if fill <= MAP_ROWS_PER_ID * n else "sort"
  if method == "map":
    position = lax.iota(jnp.int32, n)
    first = jnp.full((fill + 1,), n, jnp.int32).at[ids].min(position)[ids]
    is_first = (first == position) & (ids < fill)
    pos = jnp.cumsum(is_first.astype(jnp.int32)) - 1  # slot of each first
    uniq = jnp.full((size,), fill, jnp.int32).at[
        jnp.where(is_first, pos, size)].set(ids, mode="drop")
    return uniq, pos[first]
  if method != "sort":
    raise ValueError(f"unique_slots method must be auto, map or sort: {method!r}")
  sorted_ids, order = lax.sort((ids, lax.iota(jnp.int32, n)), num_keys=1)
  new = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
  pos = jnp.cumsum(new.astype(jnp.int32)) - 1
  # Only `fill` (the largest value) can fall beyond slot U - 1: dropped.
  uniq = jnp.full((size,), fill, jnp.int32).at[pos].set(sorted_ids, mode="drop")
  slot = jnp.zeros((n,), jnp.int32).at[order].set(pos)
  return uniq, slot


def compact(sites: Dict[Path, tuple], row_grads, tables: Dict[Path, jax.Array],
            weights: jax.Array, axis_name: str, lead_ndim: int = 0
            ) -> Dict[Path, RowGrad]:
  """This device's row gradients -> every table's global RowGrad.

  Per-device code with collectives over `axis_name`.

  Args:
    sites: {table path: (int[B, ...] ids of lookup site k, ...)}, -1 for
      positions that touch no row (`flatten_sites` of the sown collection).
    row_grads: the gradient w.r.t. the `LOOKUP_ROWS` perturbations, each
      [*lead, B, ..., d].
    tables: {table path: the table [rows, d]} (for rows and d).
    weights: float[B], the batch's example weights (0: padding).
    axis_name: the data-parallel axis.
    lead_ndim: leading axes of the row gradients (1 for per-term [T, ...]).
  Returns:
    {table path: RowGrad with grads [*lead, U, d]}, the same on every device.
  """
  flat_rows = traverse_util.flatten_dict(row_grads)
  valid = weights > 0
  out = {}
  for path, site_ids in sites.items():
    num_rows, dim = tables[path].shape
    ids, grads = [], []
    for k, site in enumerate(site_ids):
      keep = valid.reshape(valid.shape + (1,) * (site.ndim - 1)) & (site >= 0)
      ids.append(jnp.where(keep, site, num_rows).reshape(-1).astype(jnp.int32))
      g = flat_rows[path[:-1] + (embedding.site_name(path[-1], k),)]
      grads.append(g.reshape(g.shape[:lead_ndim] + (-1, dim)))
    ids = jnp.concatenate(ids)
    grads = jnp.concatenate(grads, axis=lead_ndim)
    all_ids = collectives.all_gather_tiled(ids, axis_name)
    size = min(all_ids.shape[0], num_rows)
    n = ids.shape[0]
    offset = lax.axis_index(axis_name) * n
    if _use_native(all_ids, num_rows, grads):  # the same values, one pass
      lead = grads.shape[:lead_ndim]
      uniq, summed = native.compact_rows(
          all_ids, grads.reshape((-1, n, dim)), offset, size, num_rows)
      summed = summed.reshape(lead + (size, dim))
    else:
      uniq, slot = unique_slots(all_ids, size, num_rows)
      slot = lax.dynamic_slice_in_dim(slot, offset, n)
      slot = jnp.where(ids < num_rows, slot, size)  # dropped below
      summed = jnp.zeros(grads.shape[:lead_ndim] + (size, dim), grads.dtype)
      summed = summed.at[..., slot, :].add(grads, mode="drop")
    out[path] = RowGrad(uniq, collectives.psum(summed, axis_name))
  return out


def _use_native(all_ids, num_rows: int, grads) -> bool:
  """Whether `compact` runs the native kernel (accel/native/
  compact_rows.cc): where `unique_slots` takes its "map" method (ids in
  order of first occurrence), for float32 gradients on CPU."""
  return (num_rows <= MAP_ROWS_PER_ID * all_ids.shape[0] and
          grads.dtype == jnp.float32 and jax.default_backend() == "cpu" and
          native.use("compact_rows"))


def all_rows(dense_grad: jax.Array) -> RowGrad:
  """A dense table gradient [rows, d] as a RowGrad (ids None), for the
  optimizers that move every row anyway (`RowOptimizer.moves_all_rows`)."""
  return RowGrad(None, dense_grad)


def densify(row_grad: RowGrad, num_rows: int) -> jax.Array:
  """The dense table gradient [..., rows, d] of a RowGrad."""
  g = row_grad.grads
  dense = jnp.zeros(g.shape[:-2] + (num_rows, g.shape[-1]), g.dtype)
  return dense.at[..., row_grad.ids, :].add(g, mode="drop")


def objective(local_terms, params, batch, rng, model, perturbations,
              axis_name: str):
  """The step's row-gradient `gradients.Objective`: the terms as a function
  of (the non-table params, the rows every lookup gathers), tables held
  constant.

  Args:
    local_terms: (params, collections, mutable) -> (local float[T],
      gradients.TermsAux), the step's forward pass.
    params: the params.
    batch: this device's batch.
    rng: its dropout key.
    model: the model (its lookups' shapes).
    perturbations: () -> the zero representation perturbations.
    axis_name: the data-parallel axis.
  """
  sites, zeros = lookup_shapes(model, params, batch, rng)
  tables, rest = split(params, tuple(sites))

  def terms(primals, pert):
    rest_params, rows = primals
    collections = {embedding.LOOKUP_ROWS: rows}
    if pert is not None:
      collections["perturbations"] = pert
    return local_terms(merge(tables, rest_params), collections,
                       (embedding.LOOKUP_IDS,))

  def reduce(cot, aux, lead_ndim):
    rest_grads, row_grads = cot
    compacted = compact(flatten_sites(aux.mutated.get(embedding.LOOKUP_IDS, {})),
                        row_grads, tables, batch["weights"], axis_name,
                        lead_ndim)
    grads = collectives.psum(rest_grads, axis_name)
    return (merge({p: r.grads for p, r in compacted.items()}, grads),
            {p: r.ids for p, r in compacted.items()})

  def densify_tree(grads, row_ids):
    return densify_leaves(grads, row_ids, tables)

  return gradients.Objective(terms, (rest, zeros), reduce, perturbations,
                             densify=densify_tree, loop_vjp=True)


def densify_leaves(grads, row_ids, tables):
  """`grads` with its compact table leaves (rows `row_ids`) made dense;
  `tables`: {path: the table, or anything with its shape}."""
  return merge({p: densify(RowGrad(ids, _leaf(grads, p)), tables[p].shape[0])
                for p, ids in row_ids.items()}, grads)


def _leaf(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def has_stacked_tables(params) -> bool:
  """Whether some embedding table is not 2-D (e.g. DML peers under nn.vmap)."""
  return any(str(p[-1]).startswith(embedding.TABLE_PREFIXES) and x.ndim != 2
             for p, x in traverse_util.flatten_dict(params).items())
