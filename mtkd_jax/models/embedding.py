"""Input layer: sparse ids, multi-hot ids, dense features, sequences -> one vector.

All sparse fields with the same embedding width live in ONE concatenated
table with per-field row offsets, so a batch's lookups are one gather (and the
backward pass one scatter-add) instead of one per field. A behaviour sequence
that `shares` a sparse field gathers from that field's rows of the same table.
"""
from typing import Dict, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import sequence as sequence_lib

DEFAULT_EMBED_INIT = nn.initializers.normal(stddev=0.01)


def group_fields_by_dim(fields) -> Dict[int, Tuple[int, ...]]:
  """Embedding width -> indices (into `fields`) of the fields of that width."""
  groups = {}
  for i, f in enumerate(fields):
    groups.setdefault(f.embed_dim, []).append(i)
  return {dim: tuple(idx) for dim, idx in sorted(groups.items())}


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

  @nn.compact
  def __call__(self, batch) -> jnp.ndarray:
    parts = []
    sparse = batch["sparse"]
    rows = {}  # sparse field name -> (its table, its row offset, its ids [B])
    for dim, idx in group_fields_by_dim(self.spec.sparse).items():
      vocab = [self.spec.sparse[i].vocab_size for i in idx]
      offsets = np.concatenate([[0], np.cumsum(vocab)[:-1]]).astype(np.int32)
      table = self.param(f"sparse_table_d{dim}", self.embed_init,
                         (int(sum(vocab)), dim), jnp.float32)
      ids = sparse[:, np.asarray(idx)] + offsets  # [B, F_g]
      for j, (i, offset) in enumerate(zip(idx, offsets)):
        rows[self.spec.sparse[i].name] = (table, int(offset), ids[:, j])
      emb = jnp.take(table, ids, axis=0)  # [B, F_g, dim]
      parts.append(emb.reshape(emb.shape[0], -1))
    for field in self.spec.multi_hot:
      table = self.param(f"multi_hot_{field.name}", self.embed_init,
                         (field.vocab_size, field.embed_dim), jnp.float32)
      ids = batch[f"multi_hot/{field.name}"]  # [B, K], -1 pads
      mask = (ids >= 0).astype(jnp.float32)
      emb = jnp.take(table, jnp.maximum(ids, 0), axis=0) * mask[..., None]
      count = jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
      parts.append(emb.sum(axis=1) / count)
    if self.spec.dense:
      parts.append(batch["dense"].astype(jnp.float32))
    for field in self.spec.sequences:
      ids = batch[f"sequence/{field.name}"]  # [B, L], -1 pads
      mask = ids >= 0
      if field.shares:
        table, offset, target_ids = rows[field.shares]
        target = jnp.take(table, target_ids, axis=0)  # [B, d]
      else:
        table = self.param(f"sequence_table_{field.name}", self.embed_init,
                           (field.vocab_size, field.embed_dim), jnp.float32)
        offset, target = 0, None
      emb = jnp.take(table, jnp.where(mask, ids + offset, 0), axis=0)
      emb = emb * mask[..., None].astype(emb.dtype)  # [B, L, d]
      encoder = sequence_lib.make_encoder(field, f"sequence_{field.name}")
      parts.append(encoder(emb, mask, target))
    return jnp.concatenate(parts, axis=-1)
