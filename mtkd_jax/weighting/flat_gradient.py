"""Methods that act on the flat per-task gradients, not only their Gram matrix.

Each needs `TaskGrads.flat` float32[T, P] (the shared parameters' global
per-task gradients, concatenated in `ravel_pytree` order;
`needs_full_grads`), because it works coordinate by coordinate or layer by
layer:

- GradDrop (Chen et al., NeurIPS 2020) keeps, per coordinate, only the
  gradients of one sign, drawn by the sign purity of that coordinate;
- ExcessMTL (He et al., ICML 2024) estimates each task's excess risk with a
  diagonal (AdaGrad) preconditioner of its accumulated squared gradients;
- GradVac per layer (Wang et al., ICLR 2021, as the paper applies it): the
  GradVac correction with its own cosine targets in every parameter group.

No representation-gradient mode (`supports_rep_grad=False`).
"""
import functools
import itertools
from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
from jax import lax

from mtkd_jax import errors
from mtkd_jax.weighting import base
from mtkd_jax.weighting.gradient_level import _result, gradvac_coefficients
from mtkd_jax.weighting.loss_level import State, stateless_init


def _flat(grads, name: str) -> jax.Array:
  if grads is None or grads.flat is None:
    raise ValueError(f"{name} needs the flat shared gradients (TaskGrads.flat).")
  return lax.stop_gradient(grads.flat)


def _require_size(num_shared_params, name: str) -> int:
  if num_shared_params is None:
    raise ValueError(f"{name} keeps per-coordinate state of the flat shared "
                     "gradients: init needs num_shared_params=P.")
  return int(num_shared_params)


# ----------------------------------------------------------------------------
# GradDrop (Chen et al., NeurIPS 2020).


def graddrop_direction(flat: jax.Array, rng: jax.Array, leak: float = 0.0
                       ) -> jax.Array:
  """Gradient sign dropout of the per-task gradients, coordinate-wise.

  P = 1/2 (1 + sum_t g_t / sum_t |g_t|) (sign purity, +1e-7 in the
  denominator); U ~ Uniform(0, 1) per coordinate; the mask keeps
  M_t = [P > U][g_t > 0] + [P < U][g_t < 0]; the result is
  sum_t (leak + (1 - leak) M_t) g_t.

  Args:
    flat: float[T, P].
    rng: PRNG key of U.
    leak: the fraction of every gradient that always passes.
  Returns:
    float[P].
  """
  purity = 0.5 * (1.0 + jnp.sum(flat, axis=0) /
                  (jnp.sum(jnp.abs(flat), axis=0) + 1e-7))
  u = jax.random.uniform(rng, purity.shape, flat.dtype)
  mask = (((purity > u)[None] & (flat > 0)) |
          ((purity < u)[None] & (flat < 0))).astype(flat.dtype)
  return jnp.sum((leak + (1.0 - leak) * mask) * flat, axis=0)


def _graddrop_update(losses, grads, state, *, leak, step=None, rng=None):
  del step
  direction = graddrop_direction(_flat(grads, "graddrop"), rng, leak)
  return _result(state, jnp.ones_like(losses), direction=direction)


def graddrop(leak: float = 0.0) -> base.WeightingMethod:
  """GradDrop: gradient sign dropout.

  Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a
  Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
  NeurIPS 2020, Eqs. (1)-(3) and Algorithm 1 (`graddrop_direction`): at each
  coordinate, with probability P (the positive sign purity) only the
  positive task gradients pass, otherwise only the negative ones; a leak
  l passes l g_t always. U comes from the step's `rng` (the same on every device).

  Where: the paper applies it to the gradients at a layer of shared
  activations (summed over the batch after multiplying by the activations'
  signs), LibMTL to the shared representation. This interface gives
  representation-gradient methods only a Gram matrix, so here GradDrop acts
  on the shared parameters' gradients, each parameter a coordinate (their
  gradients are already sums over the batch, so no sign correction is
  needed). Task heads get their plain gradient; the coefficients (1) are
  only logged.

  Args:
    leak: the fraction of every gradient that always passes, in [0, 1] (0,
      the paper's and LibMTL's default).
  """
  if not 0.0 <= leak <= 1.0:
    raise errors.ConfigError(f"graddrop leak must be in [0, 1], got {leak!r}.")
  return base.WeightingMethod(stateless_init,
                              functools.partial(_graddrop_update, leak=leak),
                              needs_grads=True, scales_specific=False,
                              needs_full_grads=True, supports_rep_grad=False)


# ----------------------------------------------------------------------------
# ExcessMTL (He, Zhou, Zhao & Liu, ICML 2024).


def _excess_init(term_names, *, num_shared_params=None):
  size = _require_size(num_shared_params, "excess_mtl")
  num = len(term_names)
  return State(tuple(term_names), {
      "grad_sq_sum": jnp.zeros((num, size), jnp.float32),
      "initial_risk": jnp.zeros((num,), jnp.float32),
      "w": jnp.ones((num,), jnp.float32),
      "count": jnp.zeros((), jnp.int32),
  })


def excess_risks(flat: jax.Array, grad_sq_sum: jax.Array) -> jax.Array:
  """r_t = g_t^T H_t^-1/2 g_t with H_t = diag(sum of g_t^2 so far) + 1e-7.

  Args:
    flat: float[T, P], this step's gradients.
    grad_sq_sum: float[T, P], the squared gradients summed INCLUDING this
      step's.
  Returns:
    float[T].
  """
  return jnp.sum(flat * flat / jnp.sqrt(grad_sq_sum + 1e-7), axis=1)


def _excess_update(losses, grads, state, *, step_size, step=None, rng=None):
  del losses, step, rng
  flat = _flat(grads, "excess_mtl")
  a = state.arrays
  sq = a["grad_sq_sum"] + flat * flat
  risk = excess_risks(flat, sq)
  first = a["count"] == 0
  initial = jnp.where(first, risk, a["initial_risk"])
  ratio = jnp.where(initial > 0, risk / jnp.where(initial > 0, initial, 1.0), 0.0)
  w = a["w"] * jnp.exp(step_size * ratio)
  w = w * (w.shape[0] / jnp.sum(w))
  w = jnp.where(first, a["w"], w)
  arrays = {"grad_sq_sum": sq, "initial_risk": initial, "w": w,
            "count": a["count"] + 1}
  extra = {f"excess_mtl/risk/{n}": ratio[i]
           for i, n in enumerate(state.term_names)}
  return _result(state, w, arrays, extra)


def excess_mtl(step_size: float = 1e-2) -> base.WeightingMethod:
  """ExcessMTL: robust multi-task learning with excess risks.

  He, Zhou, Zhao & Liu, "Robust Multi-Task Learning with Excess Risks",
  ICML 2024, Algorithm 1, as in their code (and LibMTL's `ExcessMTL`): each
  task's excess risk L_t(theta) - L_t(theta*) is estimated by its
  second-order Taylor bound with a diagonal AdaGrad Hessian estimate,
  r_t = g_t^T diag(sum_k g_{k,t}^2)^-1/2 g_t (`excess_risks`; the squared
  gradients accumulated in the state), normalised by its value at the
  first update r_t^0; the task weights follow exponentiated gradient ascent
  w_t <- w_t exp(eta r_t / r_t^0), renormalised to sum_t w_t = T (the first
  update only records r^0 and keeps w = 1). The weights scale the whole
  losses (task heads too). State: the squared-gradient sums float32[T, P];
  needs replicated tables.

  Args:
    step_size: eta, the weights' exponentiated-gradient step (1e-2: our
      choice; no published default was found).
  """
  return base.WeightingMethod(_excess_init,
                              functools.partial(_excess_update, step_size=step_size),
                              needs_grads=True,
                              scales_specific=True, needs_full_grads=True,
                              supports_rep_grad=False)


# ----------------------------------------------------------------------------
# GradVac per parameter group (Wang et al., ICLR 2021).

GRADVAC_GROUPINGS = ("layer", "matrix")


@flax.struct.dataclass
class GroupedState:
  """A `State` with the flat gradient's segments (static).

  Attributes:
    term_names: the loss terms (static).
    group_sizes: the sizes of the consecutive segments of the flat gradient
      that form the groups (static).
    arrays: the method's arrays.
  """
  term_names: Tuple[str, ...] = flax.struct.field(pytree_node=False)
  group_sizes: Tuple[int, ...] = flax.struct.field(pytree_node=False)
  arrays: Dict[str, Any] = flax.struct.field(default_factory=dict)


def param_groups(layout, grouping: str) -> Tuple[int, ...]:
  """The group sizes of a `base.param_layout`: "matrix": one group per
  parameter array; "layer": consecutive arrays of the same module (path
  without its last key, e.g. a Dense layer's kernel and bias) merged."""
  if grouping not in GRADVAC_GROUPINGS:
    raise errors.ConfigError(f"Unknown gradvac_layers grouping {grouping!r}; "
                             f"valid: {', '.join(GRADVAC_GROUPINGS)}.")
  if grouping == "matrix":
    return tuple(size for _, size in layout)
  sizes = []
  for _, group in itertools.groupby(layout, key=lambda e: e[0].rpartition("/")[0]):
    sizes.append(sum(size for _, size in group))
  return tuple(sizes)


def _gradvac_groups_init(term_names, *, grouping, num_shared_params=None,
                         param_layout=None):
  if param_layout is None:
    raise ValueError("gradvac_layers needs init(..., param_layout=...), the "
                     "flat gradient's segments (weighting.base.param_layout).")
  sizes = param_groups(param_layout, grouping)
  if num_shared_params is not None and sum(sizes) != num_shared_params:
    raise ValueError(f"param_layout covers {sum(sizes)} parameters, "
                     f"num_shared_params is {num_shared_params}.")
  num = len(term_names)
  return GroupedState(tuple(term_names), sizes, {
      "phi_hat": jnp.zeros((len(sizes), num, num), jnp.float32)})


def gradvac_groups_direction(flat, phi_hat, sizes, rng, beta):
  """GradVac in every group: (direction float[P], coeffs float[K, T],
  new phi_hat float[K, T, T]); the same task orders in every group."""
  bounds = list(itertools.accumulate(sizes, initial=0))
  segments = [flat[:, s:e] for s, e in zip(bounds[:-1], bounds[1:])]
  grams = jnp.stack([jnp.dot(x, x.T, precision=lax.Precision.HIGHEST)
                     for x in segments])
  a, phi_hat = jax.vmap(functools.partial(gradvac_coefficients, beta=beta),
                        in_axes=(0, 0, None))(grams, phi_hat, rng)
  coeffs = jnp.sum(a, axis=1)  # [K, T]
  direction = jnp.concatenate([c @ x for c, x in zip(coeffs, segments)])
  return direction, coeffs, phi_hat


def _gradvac_groups_update(losses, grads, state, *, beta, step=None, rng=None):
  del losses, step
  direction, coeffs, phi_hat = gradvac_groups_direction(
      _flat(grads, "gradvac_layers"), state.arrays["phi_hat"],
      state.group_sizes, rng, beta)
  names = state.term_names
  mean_phi = jnp.mean(phi_hat, axis=0)
  extra = {f"gradvac/phi_hat/{names[i]}/{names[j]}": mean_phi[i, j]
           for i, j in itertools.permutations(range(len(names)), 2)}
  return _result(state, jnp.mean(coeffs, axis=0), {"phi_hat": phi_hat}, extra,
                 direction=direction)


def gradvac_layers(beta: float = 0.01, grouping: str = "layer"
                   ) -> base.WeightingMethod:
  """Gradient Vaccine per parameter group, as the paper applies it.

  Wang, Tsvetkov, Firat & Cao, ICLR 2021, Algorithm 1 and Sec. 5 (GradVac
  applied to every layer's parameters, each with its own targets; LibMTL's
  `GradVac_group_type` 1 / 2): `gradvac` (gradient_level.py) run on every
  group's gradients with targets phi_hat float32[K, T, T] (state),
  K groups from `grouping`: "layer" (default; a module's kernel and bias
  together) or "matrix" (every parameter array). The shared
  parameters follow the concatenated corrected sums (`direction`); the task
  order per task comes from `rng`, the same in every group. The logged
  weights and targets are the means over groups. Needs the flat gradients
  and `init(param_layout=...)` (the step passes it). Task heads get their
  plain gradient.

  Args:
    beta: the targets' EMA rate (the paper's 1e-2).
    grouping: one of GRADVAC_GROUPINGS.
  """
  param_groups((), grouping)  # a bad name fails here
  return base.WeightingMethod(functools.partial(_gradvac_groups_init,
                                                grouping=grouping),
                              functools.partial(_gradvac_groups_update, beta=beta),
                              needs_grads=True, scales_specific=False,
                              needs_full_grads=True, supports_rep_grad=False,
                              needs_param_layout=True)
