"""MLP blocks, plain and stacked (several same-shaped MLPs run as one)."""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

default_kernel_init = nn.initializers.lecun_normal()


class MLP(nn.Module):
  """Dense -> ReLU (-> dropout) per hidden size; `[B, D] -> [B, hidden[-1]]`."""
  hidden: Sequence[int]
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class StackedMLP(nn.Module):
  """`num` independent MLPs of equal shape, evaluated together.

  Weights are stacked on the middle axis ([fan_in, num, width]; member n's
  kernel is `kernel[:, n]`), so the shared first layer's [D, num * width]
  matrix is a free reshape (stacked on the leading axis it was a transposed
  copy each step, ~1 ms, and one more for its gradient). How the products
  run (the fastest forms on XLA:CPU, measured on the MMoE expert block of
  the benchmark workload, 8 experts [256, 128] over a 429-d input, 2 cores):
    * training, members sharing their input (`x`: [B, D]): the first layer
      is ONE wide product x @ [D, num * width]; layers whose input is per
      member (`x`: [B, num, D]) run one plain [B, D] @ [D, width] product
      per member. The batched `einsum("bnd,ndh->bnh")` lowers to a batched
      dot plus transposes of the activations: 50 ms forward + backward at
      batch 1024, against 39 ms so.
    * evaluation with a shared input and more than `_WIDE_EVAL_MAX`
      first-layer units: each member's whole MLP in turn, so its
      activations stay in cache: 53 ms forward at batch 4096, against 77 ms
      for the wide first layer (whose [B, num * width] output spills the
      cache) and 113 ms for the batched einsum. Narrower (towers): as in
      training.
  All forms compute the same function: a Python loop over `num` separate
  `MLP`s (tests/models/test_models.py), up to float summation order.

  Returns:
    float[B, num, hidden[-1]]; with `as_list`, the num members' outputs
    float[B, hidden[-1]] as a list (what `mix_expert_list` reads: no stack).
  """
  num: int
  hidden: Sequence[int]
  dropout: float = 0.0
  final_activation: bool = True
  as_list: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    layers_ = []
    fan_in = x.shape[-1]
    for i, width in enumerate(self.hidden):
      kernel = self.param(f"kernel_{i}", _stacked_init(default_kernel_init),
                          (fan_in, self.num, width))
      bias = self.param(f"bias_{i}", nn.initializers.zeros, (self.num, width))
      activate = i < len(self.hidden) - 1 or self.final_activation
      layers_.append((kernel, bias, activate))
      fan_in = width
    if x.ndim == 2 and not train and self.num * self.hidden[0] > _WIDE_EVAL_MAX:
      outputs = []
      for n in range(self.num):
        h = x
        for kernel, bias, activate in layers_:
          h = h @ kernel[:, n] + bias[n]
          h = nn.relu(h) if activate else h
        outputs.append(h)
      return outputs if self.as_list else jnp.stack(outputs, axis=1)
    for i, (kernel, bias, activate) in enumerate(layers_):
      fan_in, num, width = kernel.shape
      if x.ndim == 2:  # shared input: one [B, D] @ [D, num * width] product
        x = (x @ kernel.reshape(fan_in, num * width)).reshape(
            x.shape[0], num, width)
      else:  # split, not x[:, n]: its gradient is one concatenate, where
        # slicing's is num zero-padded copies of x summed (T = 4 towers under
        # rep-grad's vmap: 4 x 8 MB written)
        parts = [part[:, 0] @ kernel[:, n] for n, part in
                 enumerate(jnp.split(x, num, axis=1))]
        if (self.as_list and i == len(layers_) - 1 and
            (self.dropout == 0 or not train)):  # the members, unstacked
          parts = [h + bias[n] for n, h in enumerate(parts)]
          return [nn.relu(h) for h in parts] if activate else parts
        x = jnp.stack(parts, axis=1)
      x = x + bias
      if activate:
        x = nn.relu(x)
        if self.dropout > 0:
          x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return [x[:, n] for n in range(self.num)] if self.as_list else x


# Evaluation with a shared input runs each member's MLP in turn above this
# many first-layer units (the experts' 8 x 256); below it, as in training,
# one wide product: Shared-Bottom's two [64] towers at batch 4096 took 2 x
# 0.66 ms member by member.
_WIDE_EVAL_MAX = 1024


def _stacked_init(init):
  """Applies a [fan_in, fan_out] initializer to each member n of a
  [fan_in, num, fan_out] kernel (the values of `init` on [num, fan_in,
  fan_out] with one key per member, moved to the middle axis)."""
  def stacked(key, shape, dtype=jnp.float32):
    fan_in, num, fan_out = shape
    keys = jax.random.split(key, num)
    per_member = jax.vmap(lambda k: init(k, (fan_in, fan_out), dtype))(keys)
    return per_member.transpose(1, 0, 2)
  return stacked


# A model whose shared representation E reaches every loss only through
# `mixture = mix_experts(gates, E)`, and whose mixture slot t feeds task t's
# output alone (spec order), may say so, for rep-grad weighting
# (the model's `rep_gram` hook, models/mixture.py):
# `self.perturb(MIXTURE_SITE, mixture)` and aux.mixture_gates = gates
# (models/base.py, contract rule 4).
MIXTURE_SITE = "shared_mixture"

_MIX_UNROLL_MAX = 16  # mixtures summed term by term in the backward pass


def mix_expert_list(gates, experts, index=None):
  """`mix_experts` of the experts as a list, without stacking them.

  Args:
    gates: float[B, T, K].
    experts: a list of E arrays float[B, H].
    index: None (K = E, gate k weights expert k), or static ints [T][K]:
      task t's gate entry k weights expert index[t][k].
  Returns:
    float[B, T, H]: sum_k gates[:, t, k] * experts[index[t][k]], summed in
    k order.

  Elementwise products and sums, which XLA fuses into one loop (and whose
  gradients are such loops and row reductions): stacking StackedMLP's
  members into [B, E, H] for the batched "bte,beh->bth" product costs a
  copy of every expert output.
  """
  num_tasks, k = gates.shape[1:]
  if index is None:
    if k != len(experts):
      raise ValueError(f"gates weigh {k} experts, {len(experts)} given")
    index = [range(k)] * num_tasks
  mixtures = []
  for t in range(num_tasks):
    terms = [gates[:, t, j, None] * experts[e] for j, e in enumerate(index[t])]
    mixtures.append(functools.reduce(lambda a, b: a + b, terms))
  return jnp.stack(mixtures, axis=1)


def mix_members(module: nn.Module, gates, members, index=None):
  """(mixture, experts): the gated mixture of StackedMLP members (a list)
  and their stack float[B, E, H] under `module.perturb("shared", .)`.

  With rep-grad weighting perturbing "shared", the mixture reads the
  perturbed stack (`mix_experts`); otherwise it reads the members
  (`mix_expert_list`), and XLA drops the stack unless something else
  reads it (aux.shared: feature-hint distillation). Both are the same
  function up to float summation order (tests/models/test_models.py).
  """
  experts = jnp.stack(members, axis=1)
  perturbed = module.perturb("shared", experts)
  if perturbed is experts:  # perturb is the identity here
    return mix_expert_list(gates, members, index), experts
  if index is not None:
    gates = jnp.einsum("btk,tkn->btn", gates, jax.nn.one_hot(
        np.asarray(index), len(members), dtype=gates.dtype))
  return mix_experts(gates, perturbed), perturbed


@jax.custom_vjp
def mix_experts(gates, experts):
  """Each task's gated mixture of experts: `einsum("bte,beh->bth")`.

  Args:
    gates: float[B, T, E], task t's weight on expert e.
    experts: float[B, E, H].

  Returns:
    float[B, T, H]: sum_e gates[b, t, e] * experts[b, e, :].

  The value and gradients are the einsum's; only the backward pass to the
  experts is written differently. Autodiff transposes the einsum into a
  [B]-batched dot that contracts over the T tasks (a length-2..4
  contraction per example: 3 ms of MMoE's 57 ms train step at T = 4 on
  the benchmark workload, 2 cores); here it is sum_t gates[:, t, :, None] *
  ct[:, t, None, :], one elementwise loop (0.3 ms). Under `vmap` over
  one-hot task cotangents (rep-grad weighting) the batched dot also came
  with a transpose of the [T, B, E, H] result; the sum writes it in place.
  """
  return jnp.einsum("bte,beh->bth", gates, experts)


def _mix_experts_fwd(gates, experts):
  return mix_experts(gates, experts), (gates, experts)


def _mix_experts_bwd(res, ct):
  gates, experts = res
  num_tasks = gates.shape[1]
  d_gates = jnp.einsum("bth,beh->bte", ct, experts)
  if num_tasks <= _MIX_UNROLL_MAX:
    d_experts = sum(gates[:, t, :, None] * ct[:, t, None, :]
                    for t in range(num_tasks))
  else:
    d_experts = jnp.einsum("bte,bth->beh", gates, ct)
  return d_gates.astype(gates.dtype), d_experts.astype(experts.dtype)


mix_experts.defvjp(_mix_experts_fwd, _mix_experts_bwd)
