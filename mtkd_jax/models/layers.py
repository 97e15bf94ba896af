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

  Weights are stacked on a leading axis, so the `num` first layers are one
  wide matrix product when they share their input (`x`: [B, D]) and one
  batched product otherwise (`x`: [B, num, D]). Equivalent to a Python loop
  over `num` separate `MLP`s (see tests/models/test_mtl.py).

  Returns:
    float[B, num, hidden[-1]].
  """
  num: int
  hidden: Sequence[int]
  dropout: float = 0.0
  final_activation: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool):
    shared_input = x.ndim == 2
    for i, width in enumerate(self.hidden):
      fan_in = x.shape[-1]
      kernel = self.param(f"kernel_{i}", _stacked_init(default_kernel_init),
                          (self.num, fan_in, width))
      bias = self.param(f"bias_{i}", nn.initializers.zeros, (self.num, width))
      if shared_input:
        x = jnp.einsum("bd,ndh->bnh", x, kernel)
        shared_input = False
      else:
        x = jnp.einsum("bnd,ndh->bnh", x, kernel)
      x = x + bias
      last = i == len(self.hidden) - 1
      if not last or self.final_activation:
        x = nn.relu(x)
        if self.dropout > 0:
          x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


def _stacked_init(init):
  """Applies a [fan_in, fan_out] initializer to each slice of [num, in, out]."""
  def stacked(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
  return stacked
