"""Multi-task architectures: Shared-Bottom and MMoE.

Every model follows the contract of `base.py`: it maps a batch to
`(outputs, aux)`, `outputs = {task: float[B]}` (logits for binary tasks,
predictions for regression tasks) and `aux` a `base.Aux`.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers
from mtkd_jax.models import mixture


def head_width(spec) -> int:
  """W, the width of every tower's last layer: the most classes of any
  multiclass task, else 1 (binary and regression tasks read unit 0)."""
  return max([t.num_classes if t.kind == "multiclass" else 1
              for t in spec.tasks] + [1])


def _task_outputs(spec, tower_logits):
  """float[B, T, W] (or [B, T]) -> {task: float[B]} in spec order.

  Binary / regression tasks take unit 0 of their tower, float[B]; a
  multiclass task with C classes takes its first C units, float[B, C].
  """
  if tower_logits.ndim == 2:
    tower_logits = tower_logits[..., None]
  out = {}
  for i, t in enumerate(spec.tasks):
    if t.kind == "multiclass":
      out[t.name] = tower_logits[:, i, :t.num_classes]
    else:
      out[t.name] = tower_logits[:, i, 0]
  return out


class SharedBottom(nn.Module):
  """One shared bottom MLP, then one tower per task (Caruana 1997).

  x = embed(batch); h = bottom(x); y_t = tower_t(h).
  """
  spec: specs_lib.DatasetSpec
  bottom_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0
  task_specific_params = ("towers",)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    h = layers.MLP(self.bottom_hidden, self.dropout, name="bottom")(x, train=train)
    h = self.perturb("shared", h)  # rep-grad weighting differentiates here
    towers = layers.StackedMLP(len(self.spec.tasks), tuple(self.tower_hidden) + (head_width(self.spec),),
                               self.dropout, final_activation=False,
                               name="towers")
    logits = towers(h, train=train)
    num_tasks = len(self.spec.tasks)
    aux = base.Aux(shared=h, task_inputs=jnp.broadcast_to(
        h[:, None], (h.shape[0], num_tasks, h.shape[-1])))
    return _task_outputs(self.spec, logits), aux


class MMoE(nn.Module):
  """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018, eq. 5-6).

  f_k(x): E expert MLPs sharing the input x; g^t(x) = softmax(W_gt x), one
  linear softmax gate per task; y_t = h_t(sum_k g^t(x)_k f_k(x)).
  The experts are stacked weights evaluated as one wide matrix product.
  """
  spec: specs_lib.DatasetSpec
  num_experts: int = 8
  expert_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0
  task_specific_params = ("towers",)
  # Rep-grad weighting's Gram from the gated mixture (models/mixture.py).
  rep_gram = staticmethod(mixture.mixture_rep_gram)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    num_tasks = len(self.spec.tasks)
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    members = layers.StackedMLP(self.num_experts, self.expert_hidden,
                                self.dropout, as_list=True,
                                name="experts")(x, train=train)
    gate_logits = nn.Dense(num_tasks * self.num_experts, name="gates")(x)
    gates = nn.softmax(gate_logits.reshape(-1, num_tasks, self.num_experts), axis=-1)
    mixed, experts = layers.mix_members(self, gates, members)
    mixed = self.perturb(layers.MIXTURE_SITE, mixed)  # E reaches the towers
    towers = layers.StackedMLP(num_tasks, tuple(self.tower_hidden) + (head_width(self.spec),),
                               self.dropout, final_activation=False,
                               name="towers")
    logits = towers(mixed, train=train)
    aux = base.Aux(shared=experts, task_inputs=mixed, gates=gates,
                   mixture_gates=gates)  # E reaches the losses only here
    return _task_outputs(self.spec, logits), aux
