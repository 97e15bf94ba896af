"""MLP blocks, plain and stacked (several same-shaped MLPs run as one)."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
  BENCHMARK.md, 8 experts [256, 128] over a 429-d input, 2 cores):
    * training, members sharing their input (`x`: [B, D]): the first layer
      is ONE wide product x @ [D, num * width]; layers whose input is per
      member (`x`: [B, num, D]) run one plain [B, D] @ [D, width] product
      per member. The batched `einsum("bnd,ndh->bnh")` lowers to a batched
      dot plus transposes of the activations: 50 ms forward + backward at
      batch 1024, against 39 ms so.
    * evaluation with a shared input: each member's whole MLP in turn, so
      its activations stay in cache: 53 ms forward at batch 4096, against
      77 ms for the wide first layer (whose [B, num * width] output spills
      the cache) and 113 ms for the batched einsum.
  All forms compute the same function: a Python loop over `num` separate
  `MLP`s (tests/models/test_models.py), up to float summation order.

  Returns:
    float[B, num, hidden[-1]].
  """
  num: int
  hidden: Sequence[int]
  dropout: float = 0.0
  final_activation: bool = True

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
    if x.ndim == 2 and not train:  # each member's MLP in turn (no dropout)
      outputs = []
      for n in range(self.num):
        h = x
        for kernel, bias, activate in layers_:
          h = h @ kernel[:, n] + bias[n]
          h = nn.relu(h) if activate else h
        outputs.append(h)
      return jnp.stack(outputs, axis=1)
    for kernel, bias, activate in layers_:
      fan_in, num, width = kernel.shape
      if x.ndim == 2:  # shared input: one [B, D] @ [D, num * width] product
        x = (x @ kernel.reshape(fan_in, num * width)).reshape(
            x.shape[0], num, width)
      else:
        x = jnp.stack([x[:, n] @ kernel[:, n] for n in range(num)], axis=1)
      x = x + bias
      if activate:
        x = nn.relu(x)
        if self.dropout > 0:
          x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


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
