"""Two-tower retrieval next to ranking tasks: `TwoTowerMTL`.

A retrieval task (kind "retrieval", `specs.TaskSpec.item_field`) learns a
user embedding u and an item embedding v whose cosine, over a temperature
tau, scores every item of the catalogue (DSSM-style two towers; Covington et
al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016; Yi et
al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019).

`TwoTowerMTL` shares ONE `FeatureEmbedding` between
  * an MMoE (Ma et al., KDD 2018) over the full input for the spec's binary /
    regression / multiclass tasks, exactly as `mtl.MMoE`, and
  * the two towers: the user tower reads every embedded input that is not an
    item field (`spec.item_fields`: the user-side sparse and multi-hot fields,
    the dense features and the sequence encodings), the item tower reads the
    item fields.

Outputs of a retrieval task:
  train=True:  the in-batch logits S float[B, B] (Yi et al. 2019, eq. 3),
                 S_ij = <u_i, v_j> / tau - log q_j,
               with q_j the sampling probability of row j's item, read from
               the batch column "item_logq/<task>" (float[B]; absent -> no
               correction). Column j is masked (-1e9) where row j is padding
               (weights == 0) or, for j != i, where row j's item is row i's
               item (an "accidental hit", not a negative). The loss
               "in_batch_softmax" takes the diagonal as the target. With
               several devices the negatives are the device's own rows.
  train=False: the scores of every catalogue item, float[B, I],
                 <u_b, v_i> / tau   (no logQ term: it only corrects the
                                     sampled softmax),
               with the item tower run over `catalogue` (the loader's
               `Splits.extras["catalogue"]`: one batch-layout row per item)
               inside every eval batch: I = 1,682 rows for MovieLens-100K
               cost less than one eval batch. `evaluate.retrieval_task_metrics`
               ranks each held-out item among them.
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mtkd_jax import errors
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers
from mtkd_jax.models import mtl

MASKED = -1e9  # a masked in-batch logit (finite: a fully padded row stays NaN-free)


@dataclasses.dataclass(frozen=True, eq=False)
class Catalogue:
  """Every item as one row of a batch-layout dict of numpy columns.

  Hashed and compared by identity (it holds arrays), so it can be a Flax
  module attribute.
  """
  columns: Dict[str, Any]

  @property
  def num_items(self) -> int:
    return len(self.columns["sparse"])


def _width(spec, field_name):
  for f in spec.sparse + spec.multi_hot:
    if f.name == field_name:
      return f.embed_dim
  raise KeyError(field_name)


def item_and_user_columns(spec: specs_lib.DatasetSpec
                          ) -> Tuple[np.ndarray, np.ndarray]:
  """Column indices of `FeatureEmbedding`'s output for the item tower and the
  user tower.

  The embedding's output is, in order: the sparse fields by width group (see
  `embedding.group_fields_by_dim`), each multi-hot field, the dense features,
  then the sequence encodings (unknown width: they run to the end). Item
  columns are those of `spec.item_fields`; user columns are every other
  sparse / multi-hot field, the dense block and (as the slice `[start:]`,
  encoded as -1 here) the sequences.

  Returns:
    (item_idx int[Di], user_idx int[Du]) over the columns before the
    sequences; `seq_start` sequence columns follow (see `split_embedding`).
  """
  item, user, pos = [], [], 0
  order = [spec.sparse[i].name
           for _, idx in embedding.group_fields_by_dim(spec.sparse).items()
           for i in idx] + [m.name for m in spec.multi_hot]
  for name in order:
    width = _width(spec, name)
    (item if name in spec.item_fields else user).extend(range(pos, pos + width))
    pos += width
  user.extend(range(pos, pos + len(spec.dense)))
  return np.asarray(item, np.int32), np.asarray(user, np.int32)


def split_embedding(spec, x):
  """float[B, D] embedding -> (item part [B, Di], user part [B, Du + S])."""
  item_idx, user_idx = item_and_user_columns(spec)
  seq_start = len(item_idx) + len(user_idx)
  user = jnp.concatenate([x[:, user_idx], x[:, seq_start:]], axis=-1)
  return x[:, item_idx], user


def _l2_normalize(x, eps=1e-6):
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps**2))


class TwoTowerMTL(nn.Module):
  """Shared embeddings + MMoE for ranking tasks + a two-tower retrieval head.

  Attributes:
    spec: its tasks may include any number of "retrieval" tasks (each gets
      its own pair of towers) next to binary / regression / multiclass ones.
    catalogue: the item catalogue for eval-time full-catalogue scores (not a
      knob: `models.build_model` sets it from the loader's
      `Splits.extras["catalogue"]`).
    num_experts, expert_hidden, tower_hidden, dropout: the MMoE's.
    two_tower_hidden: hidden widths of both towers.
    retrieval_dim: the width of u and v.
    temperature: tau.
  Returns from `__call__`: ({task: output}, aux) with aux.shared (the
  experts) and aux.task_inputs (the ranking tasks' mixtures; the embedding
  when there are none); no gates (their task axis would not match the
  spec's tasks).

  Task-specific params: the ranking tasks' "towers" (the whole MMoE when
  there is one ranking task) and each retrieval task's own
  "user_tower_<task>" / "item_tower_<task>".
  """
  spec: specs_lib.DatasetSpec
  catalogue: Optional[Catalogue] = None
  num_experts: int = 4
  expert_hidden: Sequence[int] = (128, 64)
  tower_hidden: Sequence[int] = (32,)
  dropout: float = 0.0
  two_tower_hidden: Sequence[int] = (64,)
  retrieval_dim: int = 32
  temperature: float = 0.05

  dataset_extras = ("catalogue",)  # fields set from Splits.extras
  supports_retrieval = True

  @staticmethod
  def from_extras(extras):
    """The catalogue field's value from the loader's `Splits.extras`."""
    catalogue = (extras or {}).get("catalogue")
    return {"catalogue": None if catalogue is None else Catalogue(catalogue)}

  @property
  def task_specific_params(self):
    names = [f"{side}_tower_{t.name}" for t in self.spec.tasks
             if t.kind == "retrieval" for side in ("user", "item")]
    ranking = [t for t in self.spec.tasks if t.kind != "retrieval"]
    if len(ranking) == 1:  # the MMoE serves that task alone
      names += ["experts", "gates", "towers"]
    elif ranking:
      names.append("towers")
    return tuple(names)

  def _retrieval_towers(self, task):
    hidden = tuple(self.two_tower_hidden)
    user = layers.StackedMLP(1, hidden + (self.retrieval_dim,), self.dropout,
                             final_activation=False,
                             name=f"user_tower_{task.name}")
    item = layers.StackedMLP(1, hidden + (self.retrieval_dim,), self.dropout,
                             final_activation=False,
                             name=f"item_tower_{task.name}")
    return user, item

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    spec = self.spec
    ranking = tuple(t for t in spec.tasks if t.kind != "retrieval")
    retrieval = tuple(t for t in spec.tasks if t.kind == "retrieval")
    embed = embedding.FeatureEmbedding(spec, name="embedding")
    x = embed(batch)
    outputs, aux = {}, base.Aux(shared=x, task_inputs=x[:, None])
    if ranking:
      sub = dataclasses.replace(spec, tasks=ranking)
      experts = layers.StackedMLP(self.num_experts, self.expert_hidden,
                                  self.dropout, name="experts")(x, train=train)
      experts = self.perturb("shared", experts)
      gate_logits = nn.Dense(len(ranking) * self.num_experts, name="gates")(x)
      gates = nn.softmax(gate_logits.reshape(-1, len(ranking),
                                             self.num_experts), axis=-1)
      mixed = layers.mix_experts(gates, experts)
      logits = layers.StackedMLP(
          len(ranking), tuple(self.tower_hidden) + (mtl.head_width(sub),),
          self.dropout, final_activation=False, name="towers")(mixed,
                                                               train=train)
      outputs.update(mtl._task_outputs(sub, logits))
      aux = base.Aux(shared=experts, task_inputs=mixed)
    if retrieval:
      x_item, x_user = split_embedding(spec, x)
      if not train:
        if self.catalogue is None:
          raise errors.ConfigError(
              "TwoTowerMTL needs the item catalogue to evaluate (the "
              "loader's Splits.extras['catalogue']).")
        cat = {k: jnp.asarray(v) for k, v in self.catalogue.columns.items()}
        cat_item, _ = split_embedding(spec, embed(cat))
    for task in retrieval:
      user_tower, item_tower = self._retrieval_towers(task)
      u = _l2_normalize(user_tower(x_user, train=train)[:, 0])  # [B, d]
      if train:
        v = _l2_normalize(item_tower(x_item, train=train)[:, 0])  # [B, d]
        scores = u @ v.T / self.temperature  # [B, B]
        logq = batch.get(f"item_logq/{task.name}")
        if logq is not None:
          scores = scores - logq[None, :]
        field = [f.name for f in spec.sparse].index(task.item_field)
        ids = batch["sparse"][:, field]
        hit = (ids[:, None] == ids[None, :]) & ~jnp.eye(len(ids), dtype=bool)
        pad = (batch["weights"] <= 0)[None, :]
        outputs[task.name] = jnp.where(hit | pad, MASKED, scores)
      else:
        v = _l2_normalize(item_tower(cat_item, train=False)[:, 0])  # [I, d]
        outputs[task.name] = u @ v.T / self.temperature  # [B, I]
    return {t.name: outputs[t.name] for t in spec.tasks}, aux
