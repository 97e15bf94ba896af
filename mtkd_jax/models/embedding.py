"""Input layer: sparse ids, multi-hot ids, dense features, sequences -> one vector.

All sparse fields with the same embedding width live in ONE concatenated
table with per-field row offsets, so a batch's lookups are one gather (and the
backward pass one scatter-add) instead of one per field. A behaviour sequence
that `shares` a sparse field gathers from that field's rows of the same table.

Row gradients (`mtkd_jax/accel/row_grads.py`): when the collection
`LOOKUP_IDS` is mutable, every lookup ("site") also records its row ids
(`sow`, -1 where the site masks a position out) and passes the gathered rows
through `self.perturb(site_name(table, k), rows, collection=LOOKUP_ROWS)`, so
the step can differentiate w.r.t. the gathered rows (and never form a dense
[rows, d] table gradient). Otherwise the layer computes exactly what it
computes without this feature.
"""
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax.accel import native
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import sequence as sequence_lib

DEFAULT_EMBED_INIT = nn.initializers.normal(stddev=0.01)
LOOKUP_IDS = "lookup_ids"  # sown per table: (int32[B, ...] ids of site k, ...)
LOOKUP_ROWS = "lookup_rows"  # perturbations: the rows gathered at each site
# The names of FeatureEmbedding's tables (2-D params [rows, d]).
TABLE_PREFIXES = ("sparse_table_d", "multi_hot_", "sequence_table_")


def site_name(table: str, k: int) -> str:
  """The `LOOKUP_ROWS` variable of the k-th lookup of `table` in a module."""
  return f"{table}:{k}"


def is_table(path, leaf) -> bool:
  """Whether a params leaf at `path` (a tuple of str) is an embedding table."""
  return (len(getattr(leaf, "shape", ())) == 2 and bool(path) and
          str(path[-1]).startswith(TABLE_PREFIXES))


def group_fields_by_dim(fields) -> Dict[int, Tuple[int, ...]]:
  """Embedding width -> indices (into `fields`) of the fields of that width."""
  groups = {}
  for i, f in enumerate(fields):
    groups.setdefault(f.embed_dim, []).append(i)
  return {dim: tuple(idx) for dim, idx in sorted(groups.items())}


def gather_concat(table, ids, dense, pert=None):
  """The input layer's rows and dense features as one matrix.

  `concat(take(table, ids, mode="clip").reshape(B, F * d) (+ pert), dense)`;
  its gradients are take's (a scatter-add into the table), the identity to
  `pert` and `dense`. On CPU (float32, `train.accel` on) the forward pass is
  one native pass, the same values bit for bit (`accel.native`).

  Args:
    table: float[rows, d].
    ids: int32[B, F] row ids (out-of-range ids are clamped, as "clip").
    dense: float[B, D], D >= 0.
    pert: None, or float[B, F, d] added to the gathered rows (the row
      gradients' perturbation).
  Returns:
    float[B, F * d + D].
  """
  if native.gather_fits(table, dense, pert):
    return native.gather_concat_vjp(table, ids, dense, pert)
  rows = jnp.take(table, ids, axis=0, mode="clip")
  if pert is not None:
    rows = rows + pert
  return jnp.concatenate([rows.reshape(rows.shape[0], -1), dense], axis=-1)


class FeatureEmbedding(nn.Module):
  """Embeds a batch in the layout of `mtkd_jax.data.specs`.

  Returns float32[B, sum_f dim_f + sum_m dim_m + D + sum_s out_s]: the sparse
  fields' embeddings (in spec order within each width group), then each
  multi-hot field's mean-pooled embedding, then the dense features, then each
  sequence field's encoding (`mtkd_jax.models.sequence`; its encoder and
  widths are the field's, set from the model config by `models.build_model`).
  """
  spec: specs_lib.DatasetSpec
  embed_init: nn.initializers.Initializer = DEFAULT_EMBED_INIT

  def _table(self, name: str, rows: int, dim: int):
    """A float32[rows', dim] table param: `embed_init`'s [rows, dim] values,
    then zero rows up to rows' (a multiple of `spec.table_row_multiple`, for
    a table sharded over a mesh axis; ids never reach the padding)."""
    multiple = self.spec.table_row_multiple
    padded = -(-rows // multiple) * multiple

    def init(key, shape, dtype):
      del shape
      table = self.embed_init(key, (rows, dim), dtype)
      return jnp.pad(table, ((0, padded - rows), (0, 0)))

    return self.param(name, init, (padded, dim), jnp.float32)

  def _record_site(self, name: str, ids, valid=None):
    """In row-grad mode, records a lookup of table `name` at `ids` (-1 where
    `valid` is False) and returns its `LOOKUP_ROWS` variable's name;
    otherwise None."""
    if self.is_initializing() or not self.is_mutable_collection(LOOKUP_IDS):
      return None
    k = len(self.get_variable(LOOKUP_IDS, name, ()))
    self.sow(LOOKUP_IDS, name, ids if valid is None else jnp.where(valid, ids, -1))
    return site_name(name, k)

  def _lookup(self, name: str, table, ids, valid=None):
    """`jnp.take(table, ids, axis=0)`; records the site in row-grad mode.

    Ids outside the table are clamped to its first / last row (the data
    loaders refuse them first).

    Args:
      name: the table's param name.
      ids: int[B, ...] row ids (in range; masked positions any valid id).
      valid: bool like `ids`, False where the caller masks the rows out
        (recorded as -1: the position touches no row).
    """
    # "clip", not the default "fill": ids are range-checked when the data
    # load (data/columns.py), and the fill's NaN select is a pass of its own.
    rows = jnp.take(table, ids, axis=0, mode="clip")
    site = self._record_site(name, ids, valid)
    if site is None:
      return rows
    return self.perturb(site, rows, collection=LOOKUP_ROWS)

  def _lookup_concat(self, name: str, table, ids, tail):
    """`_lookup(name, table, ids)` ([B, F, d]) as [B, F * d], joined with
    `tail` ([B, D]): `gather_concat`, one pass on CPU."""
    site = self._record_site(name, ids)
    if site is None:
      return gather_concat(table, ids, tail)
    # What `_lookup`'s perturb adds to the rows: the LOOKUP_ROWS variable.
    pert = self.perturb(site, jnp.zeros(ids.shape + table.shape[1:], table.dtype),
                        collection=LOOKUP_ROWS)
    return gather_concat(table, ids, tail, pert)

  @nn.compact
  def __call__(self, batch) -> jnp.ndarray:
    parts = []
    sparse = batch["sparse"]
    rows = {}  # sparse field -> (table name, table, row offset, ids [B])
    groups = list(group_fields_by_dim(self.spec.sparse).items())
    # The dense features follow the last width group when no multi-hot
    # field sits between them: gathered and joined in one pass.
    fuse_dense = bool(self.spec.dense and groups and not self.spec.multi_hot)
    for g, (dim, idx) in enumerate(groups):
      vocab = [self.spec.sparse[i].vocab_size for i in idx]
      offsets = np.concatenate([[0], np.cumsum(vocab)[:-1]]).astype(np.int32)
      name = f"sparse_table_d{dim}"
      table = self._table(name, int(sum(vocab)), dim)
      # [B, F_g]; every field in this group: no column gather (XLA fused
      # one into the table gather, slowing it).
      cols = sparse if idx == tuple(range(sparse.shape[1])) else sparse[:, np.asarray(idx)]
      ids = cols + offsets
      for j, (i, offset) in enumerate(zip(idx, offsets)):
        rows[self.spec.sparse[i].name] = (name, table, int(offset), ids[:, j])
      if fuse_dense and g == len(groups) - 1:
        tail = batch["dense"].astype(jnp.float32)
      else:
        tail = jnp.zeros((ids.shape[0], 0), jnp.float32)
      parts.append(self._lookup_concat(name, table, ids, tail))  # [B, F_g d + D]
    for field in self.spec.multi_hot:
      name = f"multi_hot_{field.name}"
      table = self._table(name, field.vocab_size, field.embed_dim)
      ids = batch[f"multi_hot/{field.name}"]  # [B, K], -1 pads
      mask = (ids >= 0).astype(jnp.float32)
      emb = self._lookup(name, table, jnp.maximum(ids, 0), ids >= 0)
      emb = emb * mask[..., None]
      count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
      parts.append(emb.sum(axis=1) / count)
    if self.spec.dense and not fuse_dense:
      parts.append(batch["dense"].astype(jnp.float32))
    for field in self.spec.sequences:
      ids = batch[f"sequence/{field.name}"]  # [B, L], -1 pads
      mask = ids >= 0
      if field.shares:
        name, table, offset, target_ids = rows[field.shares]
        target = self._lookup(name, table, target_ids)  # [B, d]
      else:
        name = f"sequence_table_{field.name}"
        table = self._table(name, field.vocab_size, field.embed_dim)
        offset, target = 0, None
      emb = self._lookup(name, table, jnp.where(mask, ids + offset, 0), mask)
      emb = emb * mask[..., None].astype(emb.dtype)  # [B, L, d]
      encoder = sequence_lib.make_encoder(field, f"sequence_{field.name}")
      parts.append(encoder(emb, mask, target))
    return jnp.concatenate(parts, axis=-1)
