"""Gradient-level methods that allocate the update by a solved program.

UPGrad projects every task gradient onto the dual cone of all of them (the
directions that conflict with no task) and averages the projections;
FairGrad chooses the weights of an alpha-fair allocation of the update's
utilities <g_t, d>. Both only need the Gram matrix (see gradient_level.py)
and solve their programs exactly or to float accuracy (`solvers`).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from mtkd_jax import errors
from mtkd_jax.weighting import base
from mtkd_jax.weighting import solvers
from mtkd_jax.weighting.gradient_level import _gram, _result
from mtkd_jax.weighting.loss_level import stateless_init

# ----------------------------------------------------------------------------
# UPGrad (Quinton & Rey, 2024).


def upgrad_weights(gram: jax.Array, norm_eps: float = 1e-4,
                   reg_eps: float = 1e-4) -> jax.Array:
  """UPGrad's weights: the mean of the T projections' weights.

  G is divided by its trace (zeroed if the trace is below `norm_eps`), then
  `reg_eps` * I is added (positive definite), as in TorchJD; the projection
  of g_i / T has weights v_i = argmin_{v >= e_i / T} v^T G v
  (`solvers.dual_cone_projection_weights`) and the result is sum_i v_i.

  Args:
    gram: float[T, T].
  Returns:
    float[T], >= 1 / T each.
  """
  num = gram.shape[0]
  trace = jnp.trace(gram)
  g = jnp.where(trace >= norm_eps, gram / jnp.where(trace > 0, trace, 1.0), 0.0)
  g = g + reg_eps * jnp.eye(num, dtype=gram.dtype)
  u = jnp.eye(num, dtype=gram.dtype) / num
  return jnp.sum(jax.vmap(lambda ui: solvers.dual_cone_projection_weights(g, ui))(u),
                 axis=0)


def _upgrad_update(losses, grads, state, *, norm_eps, reg_eps, step=None,
                   rng=None):
  del losses, step, rng
  return _result(state, upgrad_weights(_gram(grads), norm_eps, reg_eps))


def upgrad(norm_eps: float = 1e-4, reg_eps: float = 1e-4
           ) -> base.WeightingMethod:
  """UPGrad: unconflicting projection of gradients.

  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
  (arXiv:2406.16232), Eq. (3) and Proposition 1, as in TorchJD and LibMTL's
  `UPGrad`: each task's gradient g_i / T is projected onto the dual cone
  {x : <g_t, x> >= 0 for all t} and the projections are summed
  (`upgrad_weights`), so the update conflicts with no task. TorchJD solves
  each projection with quadprog; here exactly by active-set enumeration.
  Weights scale the shared gradient only, as in LibMTL (their
  `_backward_new_grads` writes the weighted sum to the shared parameters).

  Args:
    norm_eps: the Gram matrix's trace below which it is zeroed (TorchJD's
      1e-4).
    reg_eps: the ridge added to the normalised Gram matrix (TorchJD's 1e-4).
  """
  return base.WeightingMethod(
      stateless_init, functools.partial(_upgrad_update, norm_eps=norm_eps,
                                        reg_eps=reg_eps),
      needs_grads=True, scales_specific=False)


# ----------------------------------------------------------------------------
# FairGrad (Ban & Ji, ICML 2024).


def _fairgrad_update(losses, grads, state, *, alpha, step=None, rng=None):
  del losses, step, rng
  gram = _gram(grads)
  w = solvers.fair_weights(gram, alpha)
  utility = gram @ w
  residual = jnp.max(jnp.abs(w ** (1.0 / alpha) * utility - 1.0))
  return _result(state, w, extra={"fairgrad/residual": lax.stop_gradient(residual)})


def fairgrad(alpha: float = 1.0) -> base.WeightingMethod:
  """FairGrad: alpha-fair resource allocation among tasks.

  Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024:
  the update d = sum_t w_t g_t maximises the alpha-fair utility of the
  tasks' improvements u_t = <g_t, d>; its optimality condition is
  G w = w^(-1/alpha) elementwise (`solvers.fair_weights`). alpha = 1 is
  Nash-MTL's proportional fairness; alpha -> infinity approaches max-min
  fairness (MGDA-like). As in their code (and LibMTL's `FairGrad`) the
  weights scale the losses (`scales_specific=True`).

  Args:
    alpha: the fairness, > 0 (1.0, LibMTL's default).
  """
  if not alpha > 0:
    raise errors.ConfigError(f"fairgrad alpha must be > 0, got {alpha!r}.")
  return base.WeightingMethod(
      stateless_init, functools.partial(_fairgrad_update, alpha=alpha),
      needs_grads=True, scales_specific=True)
