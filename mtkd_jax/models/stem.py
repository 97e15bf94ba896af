"""STEM: Shared and Task-specific EMbeddings (Su et al., AAAI 2024).

"STEM: Unleashing the Power of Embeddings for Multi-Task Recommendation"
(arXiv 2308.13537). Every task t has its own embedding tables E_t next to
shared ones E_s; task t's m_k specific experts read x_t = E_t(batch), the
m_s shared experts read x_s = E_s(batch). Task t's gate
  g^t = softmax(W_t (x_t + x_s))
mixes ALL T m_k + m_s experts with the "All Forward, Task-specific
Backward" rule: the other tasks' specific experts enter task t's mixture
with their gradient stopped, so task t's loss trains its own embeddings and
experts and the shared ones, never another task's (the paper's sec. 3.3;
as the authors' code, which detaches them).
  y_t = tower_t(sum_n g^t_n f_n).
One STEM layer (the paper's default); the gates are linear here (the
authors' code allows a gate MLP), like the other mixtures of this package.
Every embedding table has the spec's widths, so STEM holds T + 1 copies.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers
from mtkd_jax.models import mtl


class STEM(nn.Module):
  """STEM (module docstring).

  Params: "embedding" (shared), "embedding_<task>", "experts_<task>" (task
  t's m_k experts), "shared_experts", "gates", "towers".
  aux.gates: float[B, T, T m_k + m_s], task t's weights over every expert,
  in the order task 0's specific experts, ..., task T-1's, then the shared
  ones. aux.shared: the shared experts float[B, m_s, H].
  Task-specific params: each task's embedding and experts, the gates (task
  t's gate is its own slice of one Dense) and the towers.
  """
  spec: specs_lib.DatasetSpec
  num_shared_experts: int = 1
  num_specific_experts: int = 1
  expert_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0

  @property
  def task_specific_params(self):
    return ("towers", "gates") + tuple(
        f"{kind}_{t}" for t in self.spec.task_names
        for kind in ("embedding", "experts"))

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    tasks = self.spec.task_names
    m_k, m_s = self.num_specific_experts, self.num_shared_experts
    x_s = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    shared = layers.StackedMLP(m_s, self.expert_hidden, self.dropout,
                               name="shared_experts")(x_s, train=train)
    shared = self.perturb("shared", shared)  # [B, m_s, H]
    x_t, specific = [], []
    for t in tasks:
      x = embedding.FeatureEmbedding(self.spec, name=f"embedding_{t}")(batch)
      x_t.append(x)
      specific.append(layers.StackedMLP(
          m_k, self.expert_hidden, self.dropout,
          name=f"experts_{t}")(x, train=train))  # [B, m_k, H]
    n = len(tasks) * m_k + m_s
    gate_logits = nn.Dense(len(tasks) * n, name="gates")
    mixtures, gates = [], []
    for i, t in enumerate(tasks):
      # Only task i's slice of the gate kernel reads task i's input.
      logits = gate_logits(x_t[i] + x_s).reshape(-1, len(tasks), n)[:, i]
      g = nn.softmax(logits, axis=-1)  # [B, n]
      experts = jnp.concatenate(
          [e if j == i else jax.lax.stop_gradient(e)
           for j, e in enumerate(specific)] + [shared], axis=1)  # [B, n, H]
      mixtures.append(jnp.einsum("bn,bnh->bh", g, experts))
      gates.append(g)
    mixed = jnp.stack(mixtures, axis=1)  # [B, T, H]
    logits = layers.StackedMLP(
        len(tasks), tuple(self.tower_hidden) + (mtl.head_width(self.spec),),
        self.dropout, final_activation=False, name="towers")(mixed, train=train)
    aux = base.Aux(shared=shared, task_inputs=mixed,
                   gates=jnp.stack(gates, axis=1))
    return mtl._task_outputs(self.spec, logits), aux
