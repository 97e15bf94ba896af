"""Gradient strategies: from the per-device loss terms to one update.

A strategy differentiates an `Objective` (this device's shares of the
global term means L'_t, as a function of what the step differentiates),
asks the weighting method for coefficients c_t, and returns one `Update`:
  loss_level: grad of sum_t c_t L'_t (c_t from the losses alone);
  per_term:   the T per-term gradients, their Gram matrix (and flat form for
              methods that need it), combined as sum_t c_t g_t on shared
              parameters (or the method's own direction) and sum_t s_t g_t
              on task-specific ones;
  split_per_term: per_term over two half-batches (double sampling), with
              the cross Gram matrix of the halves' gradients;
  rep_grad:   the Gram of the per-term gradients w.r.t. the shared
              representation (the model's `rep_gram` hook, else
              `weighting.gram.representation_gram`), then one VJP with c.

Each device differentiates its LOCAL share of every global mean (see
step.py); `Objective.reduce` sums the shares over devices, so a method sees
the same Gram on 1 device and on 8.

Row layout. An objective may differentiate the embedding rows its lookups
gather instead of the tables (`accel.rows`): then the table leaves of its
gradients are compact [..., U, d] rows and `row_ids` {table path: int32[U]}
says which. Strategies treat such a tree like any other (inner products
and linear combinations are exact on it) and pass `row_ids` on.
"""
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from mtkd_jax.train import collectives
from mtkd_jax.weighting import base as weighting_base
from mtkd_jax.weighting import gram as gram_lib

AXIS = "data"


class TermsAux(NamedTuple):
  """What an objective's forward pass returns besides the terms."""
  model_aux: Dict[str, Any]  # the model's aux output
  mutated: Dict[str, Any]  # collections the forward wrote ({} when none)


class Objective(NamedTuple):
  """This device's loss terms as a function of what the step differentiates.

  Attributes:
    terms: (primals, perturbations or None) -> (local float[T], TermsAux).
    primals: a pair (params part, rows part): (params, {}) on the dense
      path.
    reduce: (a cotangent of `primals` with `lead_ndim` leading axes, the
      forward's TermsAux, lead_ndim) -> (global gradient, a params-shaped
      tree; row ids {table path: int32[U]} or None), summed over devices.
    perturbations: () -> the model's zero representation perturbations.
    densify: (grads, row ids) -> grads with dense table leaves.
    loop_vjp: per-term gradients as T plain VJPs (stacked) instead of one
      `vmap` of the VJP.
    pair_scale: for `split_per_term`'s objectives (terms float[2T], two
      half-batches' shares of each global mean), the factors (one per half)
      that turn the halves' shares into their own means.
  """
  terms: Callable[..., Any]
  primals: Any
  reduce: Callable[..., Any]
  perturbations: Callable[[], Any]
  densify: Callable[..., Any] = lambda grads, row_ids: grads
  loop_vjp: bool = False
  pair_scale: Any = None


class Update(NamedTuple):
  """A strategy's result."""
  grads: Any  # the combined global gradient, params-shaped
  row_ids: Optional[Dict[tuple, jax.Array]]  # compact table leaves, or None
  terms: jax.Array  # float32[T], the global term means L'_t
  weighting_state: Any
  diagnostics: Dict[str, jax.Array]


class PerTermGrads(NamedTuple):
  local: jax.Array  # float32[T], this device's terms
  grads: Any  # global per-term gradients, params-shaped leaves [T, ...]
  row_ids: Optional[Dict[tuple, jax.Array]]


# (global terms float[T], TaskGrads or None) -> (Combination, state, diag)
Weigh = Callable[[jax.Array, Optional[weighting_base.TaskGrads]], Any]
# path -> whether the parameter belongs to one task only
IsSpecific = Callable[[Any], bool]


def shared_only(tree, is_specific: IsSpecific):
  """`tree` with task-specific leaves replaced by None (an empty subtree)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: None if is_specific(p) else x, tree)


def loss_level(objective: Objective, weigh: Weigh) -> Update:
  """grad sum_t c_t L'_t with c = the method's coefficients (no gradient
  flows through them)."""
  def total(primals):
    local, aux = objective.terms(primals, None)
    global_terms = collectives.psum(lax.stop_gradient(local), AXIS)
    combination, wstate, diag = weigh(global_terms, None)
    coeffs = lax.stop_gradient(combination.coeffs)
    return jnp.dot(coeffs, local), (global_terms, wstate, diag, aux)

  cot, (global_terms, wstate, diag, aux) = jax.grad(total, has_aux=True)(
      objective.primals)
  grads, row_ids = objective.reduce(cot, aux, 0)
  return Update(grads, row_ids, global_terms, wstate, diag)


def per_term_grads(objective: Objective) -> PerTermGrads:
  """One forward pass; the T backward passes are `vmap` of the VJP over
  the one-hot cotangents, or T plain VJPs (`objective.loop_vjp`). Both are
  exact."""
  local, vjp_fn, aux = jax.vjp(lambda x: objective.terms(x, None),
                               objective.primals, has_aux=True)
  eye = jnp.eye(local.shape[0], dtype=local.dtype)
  if objective.loop_vjp:
    per_term = jax.tree.map(lambda *g: jnp.stack(g),
                            *[vjp_fn(ct)[0] for ct in eye])
  else:
    per_term = jax.vmap(vjp_fn)(eye)[0]
  grads, row_ids = objective.reduce(per_term, aux, 1)
  return PerTermGrads(local, grads, row_ids)


def per_term(objective: Objective, weigh: Weigh, *, is_specific: IsSpecific,
             scales_specific: bool, needs_full_grads: bool) -> Update:
  """The per-term gradients combined by the method's coefficients (or its
  direction, on the shared parameters)."""
  local, grads, row_ids = per_term_grads(objective)
  if row_ids is not None and needs_full_grads:  # flat: the dense layout
    grads, row_ids = objective.densify(grads, row_ids), None
  return _weigh_and_combine(local, grads, row_ids, None, weigh, is_specific,
                            scales_specific, needs_full_grads)


def split_per_term(objective: Objective, weigh: Weigh, *,
                   is_specific: IsSpecific, scales_specific: bool,
                   needs_full_grads: bool) -> Update:
  """`per_term` for double-sampling methods (MoDo, SDMGrad): the objective's
  terms are two half-batches' shares [2T] of each global mean; their sum is
  the full-batch per-term gradient, and the method also sees the cross Gram
  matrix of the halves' own mean gradients (`TaskGrads.cross`)."""
  local2, grads2, _ = per_term_grads(objective)
  num = local2.shape[0] // 2
  first = jax.tree.map(lambda x: x[:num], grads2)
  second = jax.tree.map(lambda x: x[num:], grads2)
  cross = gram_lib.gram_matrix(shared_only(first, is_specific), num,
                               shared_only(second, is_specific))
  scale_first, scale_second = objective.pair_scale  # shares -> own means
  cross = cross * scale_first * scale_second
  grads = jax.tree.map(jnp.add, first, second)
  return _weigh_and_combine(local2[:num] + local2[num:], grads, None, cross,
                            weigh, is_specific, scales_specific,
                            needs_full_grads)


def _weigh_and_combine(local, grads, row_ids, cross, weigh: Weigh,
                       is_specific: IsSpecific, scales_specific: bool,
                       needs_full_grads: bool) -> Update:
  """The method's combination of the global per-term gradients `grads`."""
  global_terms = collectives.psum(local, AXIS)
  num_terms = global_terms.shape[0]
  shared = shared_only(grads, is_specific)
  flat = jax.vmap(lambda g: ravel_pytree(g)[0])(shared) if needs_full_grads else None
  combination, wstate, diag = weigh(
      global_terms,
      weighting_base.TaskGrads(gram_lib.gram_matrix(shared, num_terms), flat,
                               cross))
  combination = jax.tree.map(lax.stop_gradient, combination)
  grads = combine(grads, combination, is_specific, scales_specific)
  return Update(grads, row_ids, global_terms, wstate, diag)


def combine(per_term_grads_tree, combination: weighting_base.Combination,
            is_specific: IsSpecific, scales_specific: bool):
  """Shared leaves: sum_t c_t g_t (or `direction`); specific: sum_t s_t g_t
  (s = c when the method scales task-specific parameters, else 1)."""
  coeffs = combination.coeffs
  specific_coeffs = coeffs if scales_specific else jnp.ones_like(coeffs)

  def mix(path, g):
    c = specific_coeffs if is_specific(path) else coeffs
    return jnp.tensordot(c, g, axes=1)

  grads = jax.tree_util.tree_map_with_path(mix, per_term_grads_tree)
  if combination.direction is not None:
    _, unravel = ravel_pytree(shared_only(grads, is_specific))
    direction = unravel(combination.direction)
    grads = jax.tree_util.tree_map_with_path(
        lambda p, g: g if is_specific(p) else _get(direction, p), grads)
  return grads


def rep_grad(objective: Objective, weigh: Weigh, *, rep_gram,
             is_specific: IsSpecific, scales_specific: bool,
             exclusive: bool, slot_per_term: bool) -> Update:
  """Coefficients from the Gram of the representation gradients, then one
  VJP with them (task-specific parameters: the unweighted sum for methods
  that do not scale them).

  Args:
    rep_gram: the model's hook, `weighting.gram.representation_gram`'s
      signature.
    exclusive, slot_per_term: passed to `rep_gram`.
  """
  perturbations = objective.perturbations()
  local, vjp_fn, aux = jax.vjp(objective.terms, objective.primals,
                               perturbations, has_aux=True)
  global_terms = collectives.psum(local, AXIS)
  num_terms = global_terms.shape[0]
  gram = collectives.psum(
      rep_gram(lambda ct: vjp_fn(ct)[1], perturbations, aux.model_aux,
               num_terms, local.dtype, exclusive=exclusive,
               slot_per_term=slot_per_term), AXIS)
  combination, wstate, diag = weigh(global_terms,
                                    weighting_base.TaskGrads(gram))
  coeffs = lax.stop_gradient(combination.coeffs)
  params_cot, rows_cot = vjp_fn(coeffs)[0]
  if not scales_specific:  # task-specific params: the unweighted sum;
    unweighted = vjp_fn(jnp.ones_like(coeffs))[0][0]  # its shared part: DCE
    params_cot = jax.tree_util.tree_map_with_path(
        lambda p, g, u: u if is_specific(p) else g, params_cot, unweighted)
  grads, row_ids = objective.reduce((params_cot, rows_cot), aux, 0)
  return Update(grads, row_ids, global_terms, wstate, diag)


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree
