"""Gram matrices of per-term gradients: what gradient-level methods see.

G_ij = <g_i, g_j> over the shared parameters (parameter mode) or over the
shared representation (rep-grad mode, `representation_gram`; a model may
offer a cheaper, exact form of the latter as its `rep_gram` attribute, e.g.
`models.mixture.mixture_rep_gram` for MMoE).
"""
import jax
import jax.numpy as jnp
from jax import lax


def gram_matrix(per_term, num_terms: int, other=None) -> jax.Array:
  """G_ij = <g_i, g_j> over every leaf of a pytree of [T, ...] arrays.

  With `other` (a pytree of the same leaves' shapes), G_ij = <g_i, o_j>.
  A model with no shared parameters (e.g. single-task) gives zeros.
  """
  gram = jnp.zeros((num_terms, num_terms), jnp.float32)
  others = jax.tree.leaves(per_term if other is None else other)
  for x, y in zip(jax.tree.leaves(per_term), others):
    # One [T, N] x [N, T] matrix product per leaf: XLA:CPU runs the
    # multi-axis einsum "i...,j...->ij" several times slower.
    flat = x.reshape(num_terms, -1).astype(jnp.float32)
    flat_y = flat if y is x else y.reshape(num_terms, -1).astype(jnp.float32)
    gram = gram + jnp.dot(flat, flat_y.T, precision=lax.Precision.HIGHEST)
  return gram


def representation_gram(rep_vjp, perturbations, model_aux, num_terms: int,
                        dtype, *, exclusive: bool = True,
                        slot_per_term: bool = False) -> jax.Array:
  """This device's Gram of the per-term gradients w.r.t. every perturbed
  representation (`self.perturb(...)` sites): the generic rep-grad form.

  Args:
    rep_vjp: cotangent float[T] -> {site: gradient}, the VJP of the local
      terms w.r.t. the perturbations (the towers' backward only).
    perturbations: the zero perturbations {site: array}.
    model_aux: the model's aux output (unused here; model hooks read it).
    num_terms: T.
    dtype: the terms' dtype.
    exclusive, slot_per_term: unused here (see `mixture.mixture_rep_gram`).
  """
  del perturbations, model_aux, exclusive, slot_per_term
  eye = jnp.eye(num_terms, dtype=dtype)
  return gram_matrix(jax.vmap(rep_vjp)(eye), num_terms)
