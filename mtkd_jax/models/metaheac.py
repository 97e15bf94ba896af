"""MetaHeac: Meta Hybrid Experts and Critics (Zhu et al., KDD 2021).

"Learning to Expand Audience via Meta Hybrid Experts and Critics for
Recommendation and Advertising". All parameters are shared across tasks
except a task representation; two task-conditioned attentions specialise
the shared network to each task (the paper's sec. 3.2-3.3):

  z_t       = [e_t ; x]                      task t's representation: its
                                             learnt embedding e_t next to
                                             the example's embedded input x
  alpha^t   = softmax(A(z_t))  over K experts     (expert attention)
  h_t       = sum_k alpha^t_k f_k(x)              (hybrid experts)
  beta^t    = softmax(C(z_t))  over M critics     (critic attention)
  y_t       = sum_m beta^t_m sigmoid(c_m(h_t))    (hybrid critics)

with f_k MLP experts, c_m linear critics, and A, C MLPs (Dense(H) + ReLU +
Dense) shared by all tasks. A binary task returns logit(y_t), computed in
log space; a regression task y_t = sum_m beta^t_m c_m(h_t).

Departure: the paper trains the shared parameters by meta-learning over
many audience-expansion tasks (MAML-style episodes, then fine-tunes on a
new task); here the tasks are the dataset's fixed tasks and the model is
trained jointly on their losses like every other model of this package.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd_jax import errors
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers


def mixture_of_critics_logit(critic_logits, weights):
  """logit(sum_m w_m sigmoid(s_m)) for weights on the simplex, in log space.

  log y = logsumexp(log w + log_sigmoid(s)) and, since sum_m w_m = 1,
  log(1 - y) = logsumexp(log w + log_sigmoid(-s)).

  Args:
    critic_logits: float[..., M]; weights: float[..., M], summing to 1.
  Returns:
    float[...].
  """
  log_w = jnp.log(jnp.maximum(weights, 1e-30))
  log_y = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(critic_logits), -1)
  log_1my = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(-critic_logits), -1)
  return log_y - log_1my


class MetaHeac(nn.Module):
  """MetaHeac's hybrid experts and critics (module docstring).

  Attributes:
    num_experts: K; expert_hidden: each expert's MLP widths (last = H).
    num_critics: M.
    task_embed_dim: the width of e_t.
  aux.gates: alpha, float[B, T, K]; aux.diagnostics["critic_weights"]:
  beta, float[B, T, M]. Task-specific params: the task embeddings (row t
  serves task t alone); everything else is shared, as in the paper.
  """
  spec: specs_lib.DatasetSpec
  num_experts: int = 8
  num_critics: int = 4
  expert_hidden: Sequence[int] = (256, 128)
  task_embed_dim: int = 16
  dropout: float = 0.0
  task_specific_params = ("task_embedding",)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    for task in self.spec.tasks:
      if task.kind not in ("binary", "regression"):
        raise errors.ConfigError(f"MetaHeac predicts binary and regression "
                                 f"tasks; task {task.name!r} is {task.kind}.")
    num_tasks, hidden = len(self.spec.tasks), self.expert_hidden[-1]
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    experts = layers.StackedMLP(self.num_experts, self.expert_hidden,
                                self.dropout, name="experts")(x, train=train)
    experts = self.perturb("shared", experts)  # [B, K, H]
    task_emb = self.param("task_embedding", nn.initializers.normal(0.1),
                          (num_tasks, self.task_embed_dim), jnp.float32)
    z = jnp.concatenate(
        [jnp.broadcast_to(task_emb[None], (x.shape[0],) + task_emb.shape),
         jnp.broadcast_to(x[:, None], (x.shape[0], num_tasks, x.shape[-1]))],
        axis=-1)  # [B, T, d + D]

    def attention(width, name):
      h = nn.relu(nn.Dense(hidden, name=f"{name}_hidden")(z))
      return nn.softmax(nn.Dense(width, name=name)(h), axis=-1)

    alpha = attention(self.num_experts, "expert_attention")  # [B, T, K]
    beta = attention(self.num_critics, "critic_attention")  # [B, T, M]
    mixed = layers.mix_experts(alpha, experts)  # [B, T, H]
    critics = nn.Dense(self.num_critics, name="critics")(mixed)  # [B, T, M]
    outputs = {}
    for i, task in enumerate(self.spec.tasks):
      if task.kind == "binary":
        outputs[task.name] = mixture_of_critics_logit(critics[:, i],
                                                      beta[:, i])
      else:
        outputs[task.name] = jnp.sum(beta[:, i] * critics[:, i], axis=-1)
    aux = base.Aux(shared=experts, task_inputs=mixed, gates=alpha,
                   diagnostics={"critic_weights": beta})
    return outputs, aux
