"""The shape of a multi-task weighting method (optax-style init/update).

Every method, loss-level or gradient-level, reduces to choosing coefficients
c_t for the named loss terms; the train step then follows the combined
gradient  g = sum_t c_t g_t  on the shared parameters (gradient-surgery
methods such as PCGrad, CAGrad or MGDA produce linear combinations of the
task gradients too: their coefficients are functions of inner products).
So a method only ever sees

  losses: float32[T]    the terms' global (all-device) mean losses, in the
                        order of `term_names` given to `init`;
  gram:   float32[T, T] G_ij = <g_i, g_j>, the inner products of the global
                        per-term gradients of the shared parameters (or, for
                        "rep-grad" mode, of the shared representation), or
                        None for methods with `needs_grads=False`.

Because gram is computed from the all-device gradients, a method gives the
same update on 1 device and on 8 for the same global batch.

A method is built by its factory, whose keyword arguments are its
hyper-parameters (plain Python values, closed over by init and update, as
optax does): `cagrad(c=0.4, rescale=1)`.

`init(term_names) -> state`.
`update(losses, grads, state, *, step, rng) -> (combination, state, diag)`:
  grads: a `TaskGrads` (gram, and the flat gradients only for methods with
         `needs_full_grads`, the two half-batches' cross Gram matrix only
         for those with `needs_split_gram`), or None for methods with
         `needs_grads=False`;
  combination: a `Combination`: coeffs float32[T], the c_t above (no
          gradient flows through them), and optionally `direction`, the
          shared-parameter update direction itself, float32[P], for the few
          methods whose direction is not a combination of the current
          gradients (DB-MTL's and MoCo's running averages of gradients,
          GradDrop's coordinate-wise masks, GradVac per layer);
  state:  the method's new state (a pytree of arrays, checkpointed in the
          TrainState): learnable weights, running averages, ...;
  diag:   {name: scalar array} logged with the train metrics, e.g.
          {"weight/ctr": ...}.
`step` is the int32 step, `rng` a PRNG key that is the same on every device
(methods that draw random numbers, e.g. RLW and PCGrad's task order, use
it).

`scales_specific`: whether c_t also scales the gradient of task t's own
(task-specific) parameters, as for loss weighting (the loss itself is
weighted); gradient-surgery methods act on shared parameters only, so their
task-specific parameters follow the unweighted sum (c_t = 1 there), as in
the papers.

`needs_full_grads` methods get `num_shared_params=P` in `init`; those that
also set `needs_param_layout` get `param_layout`, the flat gradient's
segments by parameter (`param_layout`), e.g. to act per layer.
"""
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax


class TaskGrads(NamedTuple):
  gram: jax.Array  # float32[T, T], <g_i, g_j> over the shared parameters
  flat: Optional[jax.Array] = None  # float32[T, P], only if needs_full_grads
  # float32[T, T], <g_i(A), g_j(B)> of the mean gradients on two disjoint
  # halves A, B of the batch (double sampling), only if needs_split_gram.
  cross: Optional[jax.Array] = None


class Combination(NamedTuple):
  coeffs: jax.Array  # float32[T]
  direction: Optional[jax.Array] = None  # float32[P] shared update direction


class WeightingMethod(NamedTuple):
  init: Callable[..., Any]  # init(term_names: tuple[str, ...]) -> state
  update: Callable[..., Any]  # see the module docstring
  needs_grads: bool
  scales_specific: bool = True
  needs_full_grads: bool = False
  supports_rep_grad: bool = True  # can act on representation gradients
  # init also takes param_layout=`param_layout(shared params)` (groups of
  # the flat gradient by layer); only with needs_full_grads.
  needs_param_layout: bool = False
  # update also gets TaskGrads.cross (param mode, dense table gradients).
  needs_split_gram: bool = False


def param_layout(shared) -> Tuple[Tuple[str, int], ...]:
  """((path, size), ...) of the leaves of `shared` in the order in which
  `jax.flatten_util.ravel_pytree` concatenates them into the flat gradient;
  path is the leaf's keys joined by "/" (e.g. "experts_0/Dense_0/kernel")."""
  leaves = jax.tree_util.tree_flatten_with_path(shared)[0]
  return tuple(("/".join(str(getattr(k, "key", getattr(k, "idx", k)))
                         for k in path), int(x.size)) for path, x in leaves)
