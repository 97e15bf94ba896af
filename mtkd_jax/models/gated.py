"""Gated mixtures of experts: OMoE, PLE (CGC levels) and DSelect-k.

The contract of `base.py`: `__call__(batch, *, train) -> (outputs, aux)`
with `outputs = {task: float[B]}` and `aux.gates` float[B, T, E], each task's
mixture weights over the E experts it mixes (the evaluator logs their mean
as `gates/<task>/expert_<e>`).
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import errors
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers
from mtkd_jax.models import mtl


def _towers(spec, tower_hidden, dropout):
  """One MLP tower per task, `[B, T, H] -> [B, T, W]` logits (W =
  `mtl.head_width(spec)`)."""
  return layers.StackedMLP(len(spec.tasks),
                           tuple(tower_hidden) + (mtl.head_width(spec),),
                           dropout, final_activation=False, name="towers")


_task_outputs = mtl._task_outputs  # float[B, T, W] -> {task: [B] or [B, C]}


# --------------------------------------------------------------------------
# OMoE.
# --------------------------------------------------------------------------


class OMoE(nn.Module):
  """One-gate Mixture-of-Experts (the OMoE baseline of Ma et al., KDD 2018).

  MMoE with ONE softmax gate g(x) = softmax(W_g x) shared by every task:
  y_t = h_t(sum_k g(x)_k f_k(x)); every tower receives the same mixture.
  aux.gates is g broadcast to float[B, T, E] (identical across tasks).
  """
  spec: specs_lib.DatasetSpec
  num_experts: int = 8
  expert_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0
  task_specific_params = ("towers",)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    num_tasks = len(self.spec.tasks)
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    experts = layers.StackedMLP(self.num_experts, self.expert_hidden,
                                self.dropout, name="experts")(x, train=train)
    experts = self.perturb("shared", experts)  # for rep-grad weighting
    gate = nn.softmax(nn.Dense(self.num_experts, name="gate")(x), axis=-1)
    mixed = layers.mix_experts(gate[:, None], experts)[:, 0]  # [B, H]
    task_inputs = jnp.broadcast_to(mixed[:, None],
                                   (mixed.shape[0], num_tasks, mixed.shape[-1]))
    logits = _towers(self.spec, self.tower_hidden, self.dropout)(
        task_inputs, train=train)
    gates = jnp.broadcast_to(gate[:, None],
                             (gate.shape[0], num_tasks, self.num_experts))
    aux = base.Aux(shared=experts, task_inputs=task_inputs, gates=gates)
    return _task_outputs(self.spec, logits), aux


# --------------------------------------------------------------------------
# PLE.
# --------------------------------------------------------------------------


def ple_expert_index(num_tasks: int, num_specific: int,
                     num_shared: int) -> np.ndarray:
  """Which experts each task's gate mixes, in the fused expert order.

  A level's experts are stored as one stack of N = T * m_k + m_s: task 0's
  m_k specific experts, task 1's, ..., then the m_s shared experts.

  Returns:
    int32[T, m_k + m_s]: row t lists task t's own specific experts, then the
    shared ones (the order of aux.gates[:, t]).
  """
  shared = np.arange(num_tasks * num_specific,
                     num_tasks * num_specific + num_shared)
  return np.stack([np.concatenate(
      [np.arange(t * num_specific, (t + 1) * num_specific), shared])
                   for t in range(num_tasks)]).astype(np.int32)


class CGCLevel(nn.Module):
  """One Customized Gate Control level (Tang et al., RecSys 2020, eq. 1-4).

  Task k's gate mixes its own m_k specific experts and the m_s shared ones,
    g^k(x) = softmax(W_g^k x_k) [E_k(x_k); E_s(x_s)],
  and, below the last level, a shared gate mixes ALL experts of the level,
    g^s(x) = softmax(W_g^s x_s) [E_1(x_1); ...; E_T(x_T); E_s(x_s)],
  whose output is the next level's shared input (eq. 5-6). At the first
  level every input is the embedding, and the T * m_k + m_s experts' first
  layers are one wide matrix product.

  Inputs: task_inputs float[B, D] (first level: shared by all) or
  float[B, T, D]; shared_input float[B, D].
  Returns:
    (task_outputs float[B, T, H], shared_output float[B, H] or None,
     gates float[B, T, m_k + m_s], experts float[B, N, H]).
  """
  num_tasks: int
  num_specific: int
  num_shared: int
  expert_hidden: Sequence[int]
  has_shared_gate: bool
  dropout: float = 0.0

  @nn.compact
  def __call__(self, task_inputs, shared_input, *, train: bool):
    t, m_k, m_s = self.num_tasks, self.num_specific, self.num_shared
    if task_inputs.ndim == 2:  # first level: one input for every expert
      expert_in = task_inputs
    else:
      expert_in = jnp.concatenate(
          [jnp.repeat(task_inputs, m_k, axis=1),
           jnp.broadcast_to(shared_input[:, None],
                            (shared_input.shape[0], m_s,
                             shared_input.shape[-1]))], axis=1)
    members = layers.StackedMLP(t * m_k + m_s, self.expert_hidden,
                                self.dropout, as_list=True,
                                name="experts")(expert_in, train=train)
    gate_logits = layers.StackedMLP(t, (m_k + m_s,), final_activation=False,
                                    name="task_gates")(task_inputs, train=train)
    gates = nn.softmax(gate_logits, axis=-1)  # [B, T, m_k + m_s]
    # Task t mixes only the experts its gate selects (mix_expert_list's
    # index); `experts` is their stack [B, N, H] under perturb("shared").
    # (A [B, T]-batched product over the selected experts gathered into
    # [B, T, m_k + m_s, H] copies them; the perturbed path spreads the gates
    # over all N.)
    task_outputs, experts = layers.mix_members(
        self, gates, members, ple_expert_index(t, m_k, m_s).tolist())
    shared_output = None
    if self.has_shared_gate:
      shared_gate = nn.softmax(
          nn.Dense(t * m_k + m_s, name="shared_gate")(shared_input), axis=-1)
      shared_output = layers.mix_experts(shared_gate[:, None], experts)[:, 0]
    return task_outputs, shared_output, gates, experts


class PLE(nn.Module):
  """Progressive Layered Extraction (Tang et al., RecSys 2020, section 4).

  `num_levels` stacked CGC levels (1 = CGC). At level j, task k's experts
  read task k's output of level j-1 and the shared experts read the shared
  gate's output of level j-1 (the embedding at level 1); the last level has
  no shared gate and its task outputs feed the towers: y_k = t^k(g^{k,N}(x)).

  aux.gates: the LAST level's task gates, float[B, T, m_k + m_s]; for
  task t, entries 0..m_k-1 weight task t's OWN specific experts and entries
  m_k.. the shared experts (so `gates/<task>/expert_0` of two tasks are
  different experts). aux.shared: the last level's experts float[B, N, H]
  in the fused order of `ple_expert_index`.

  Task-specific parameters (for gradient surgery): only the towers; a level's
  specific experts are slices of its fused expert stack.
  """
  spec: specs_lib.DatasetSpec
  num_levels: int = 1
  num_shared_experts: int = 4
  num_specific_experts: int = 2
  expert_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0
  task_specific_params = ("towers",)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    if self.num_levels < 1:
      raise errors.ConfigError(f"PLE needs num_levels >= 1, got {self.num_levels}.")
    if (min(self.num_shared_experts, self.num_specific_experts) < 0 or
        self.num_shared_experts + self.num_specific_experts == 0):
      raise errors.ConfigError(
          "PLE needs num_shared_experts, num_specific_experts >= 0, not both "
          f"0; got {self.num_shared_experts}, {self.num_specific_experts}.")
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    task_inputs, shared_input = x, x
    for level in range(1, self.num_levels + 1):
      task_inputs, shared_input, gates, experts = CGCLevel(
          len(self.spec.tasks), self.num_specific_experts,
          self.num_shared_experts, tuple(self.expert_hidden),
          has_shared_gate=level < self.num_levels, dropout=self.dropout,
          name=f"level_{level}")(task_inputs, shared_input, train=train)
    logits = _towers(self.spec, self.tower_hidden, self.dropout)(
        task_inputs, train=train)
    aux = base.Aux(shared=experts, task_inputs=task_inputs, gates=gates)
    return _task_outputs(self.spec, logits), aux


# --------------------------------------------------------------------------
# DSelect-k.
# --------------------------------------------------------------------------


def smooth_step(t, gamma: float = 1.0):
  """Hazimeh et al. 2021, eq. 2 (cubic smooth-step, exactly 0/1 outside).

  S(t) = 0 for t <= -gamma/2, 1 for t >= gamma/2, and
  -2/gamma^3 t^3 + 3/(2 gamma) t + 1/2 in between (C^1 at the ends).
  """
  cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
  return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


def binary_codes(num_experts: int) -> np.ndarray:
  """bool[n, m], row i the m = ceil(log2 n)-bit binary code of i (MSB first)."""
  m = max(math.ceil(math.log2(num_experts)), 1)
  return np.array([[(i >> (m - 1 - j)) & 1 for j in range(m)]
                   for i in range(num_experts)], dtype=bool)


def single_expert_selectors(z, gamma: float, num_experts: int):
  """r(z)_i = prod_j (S(z_j) if bit j of i else 1 - S(z_j)) (paper eq. 3).

  Args:
    z: float[..., m], selector logits, m = ceil(log2 n).
    gamma: smooth-step width.
    num_experts: n.
  Returns:
    float[..., n]; sums to 1 when n is a power of 2 (else <= 1); one-hot once
    every |z_j| >= gamma / 2.
  """
  s = smooth_step(z, gamma)[..., None, :]  # [..., 1, m]
  codes = binary_codes(num_experts)  # [n, m]
  return jnp.prod(jnp.where(codes, s, 1.0 - s), axis=-1)


def _symmetric_uniform(scale):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class DSelectK(nn.Module):
  """MMoE with DSelect-k gates (Hazimeh et al., NeurIPS 2021, section 3-4).

  Per task t, k single-expert selectors with per-example logits
  z^(t,i)(x) = G^(t,i) x in R^m select experts through the binary code of
  their index (`single_expert_selectors`), and per-example selector weights
  softmax(A^t x) over the k selectors mix them:
    q^t(x) = sum_i softmax(A^t x)_i r(z^(t,i)(x)),  y_t = h_t(sum_e q^t_e f_e(x)).
  At most k experts get nonzero weight once the selectors are binary.
  Initialisation as the authors' code: G, A ~ U(-gamma/100, gamma/100),
  U(-0.05, 0.05) (selectors start near uniform).

  aux.aux_losses (per-example, added to the training loss with weight 1):
    "dselect_k/entropy" if entropy_reg > 0: entropy_reg * sum_{t,i}
      H(r(z^(t,i))), the paper's entropy regulariser pushing selectors to
      binary (H(r) = -sum_e r_e log(r_e + 1e-6), as the authors' code);
    "dselect_k/reachability" if n is not a power of 2: sum_{t,i}
      1 / sum_e r(z^(t,i))_e, the authors' term (>= T k, flat once the
      unreachable codes get zero weight) that keeps selectors off the codes
      n..2^m-1, which name no expert.
  aux.diagnostics["selectors"]: float[B, T, k, n], each selector's weights over experts.
  """
  spec: specs_lib.DatasetSpec
  num_experts: int = 8
  num_selectors: int = 2
  gamma: float = 1.0
  entropy_reg: float = 0.0
  expert_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0
  task_specific_params = ("towers",)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    num_tasks, n, k = len(self.spec.tasks), self.num_experts, self.num_selectors
    if n < 2 or k < 1:
      raise errors.ConfigError(f"DSelect-k needs num_experts >= 2 and "
                               f"num_selectors >= 1; got {n}, {k}.")
    m = binary_codes(n).shape[1]
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    experts = layers.StackedMLP(n, self.expert_hidden, self.dropout,
                                name="experts")(x, train=train)
    experts = self.perturb("shared", experts)  # for rep-grad weighting
    z_init = _symmetric_uniform(self.gamma / 100)
    z = nn.Dense(num_tasks * k * m, kernel_init=z_init, bias_init=z_init,
                 name="selector_logits")(x).reshape(-1, num_tasks, k, m)
    w_init = _symmetric_uniform(0.05)
    w = nn.Dense(num_tasks * k, kernel_init=w_init, bias_init=w_init,
                 name="selector_weights")(x).reshape(-1, num_tasks, k)
    selectors = single_expert_selectors(z, self.gamma, n)  # [B, T, k, n]
    gates = jnp.einsum("btk,btke->bte", nn.softmax(w, axis=-1), selectors)
    mixed = layers.mix_experts(gates, experts)
    logits = _towers(self.spec, self.tower_hidden, self.dropout)(
        mixed, train=train)
    aux_losses = {}
    if self.entropy_reg > 0:
      entropy = -jnp.sum(selectors * jnp.log(selectors + 1e-6), axis=-1)
      aux_losses["dselect_k/entropy"] = self.entropy_reg * entropy.sum((1, 2))
    if n != 2**m:
      aux_losses["dselect_k/reachability"] = jnp.sum(
          1.0 / selectors.sum(-1), axis=(1, 2))
    aux = base.Aux(shared=experts, task_inputs=mixed, gates=gates,
                   aux_losses=aux_losses,
                   diagnostics={"selectors": selectors})
    return _task_outputs(self.spec, logits), aux
