"""Input layer: sparse ids, multi-hot ids and dense features -> one vector.

All sparse fields with the same embedding width live in ONE concatenated
table with per-field row offsets, so a batch's lookups are one gather (and the
backward pass one scatter-add) instead of one per field.
"""
from typing import Dict, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mtkd_jax.data import specs as specs_lib

DEFAULT_EMBED_INIT = nn.initializers.normal(stddev=0.01)


def group_fields_by_dim(fields) -> Dict[int, Tuple[int, ...]]:
  """Embedding width -> indices (into `fields`) of the fields of that width."""
  groups = {}
  for i, f in enumerate(fields):
    groups.setdefault(f.embed_dim, []).append(i)
  return {dim: tuple(idx) for dim, idx in sorted(groups.items())}


class FeatureEmbedding(nn.Module):
  """Embeds a batch in the layout of `mtkd_jax.data.specs`.

  Returns float32[B, sum_f dim_f + sum_m dim_m + D]: the sparse fields'
  embeddings (in spec order within each width group), then each multi-hot
  field's mean-pooled embedding, then the dense features.
  """
  spec: specs_lib.DatasetSpec
  embed_init: nn.initializers.Initializer = DEFAULT_EMBED_INIT

  @nn.compact
  def __call__(self, batch) -> jnp.ndarray:
    parts = []
    sparse = batch["sparse"]
    for dim, idx in group_fields_by_dim(self.spec.sparse).items():
      vocab = [self.spec.sparse[i].vocab_size for i in idx]
      offsets = np.concatenate([[0], np.cumsum(vocab)[:-1]]).astype(np.int32)
      table = self.param(f"sparse_table_d{dim}", self.embed_init,
                         (int(sum(vocab)), dim), jnp.float32)
      ids = sparse[:, np.asarray(idx)] + offsets  # [B, F_g]
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
    return jnp.concatenate(parts, axis=-1)
