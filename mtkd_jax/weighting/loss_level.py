"""Loss-level weighting: coefficients from the terms' losses only.

These methods never look at gradients (`needs_grads=False`): the train step
differentiates sum_t c_t L_t once, so c_t scales the term's task-specific
parameters too (`scales_specific=True`), exactly as weighting the loss.

Every `update(losses, grads, state, *, step, rng)` returns
`(Combination(coeffs), new_state, diag)` with diag["weight/<term>"] = c_t.
`losses` are the terms' global mean losses L'_t (after the task specs' fixed
weights). A method's hyper-parameters are the keyword arguments of its
factory (`famo(lr=..., gamma=...)`), closed over by init and update.

The state of every method (also the gradient-level ones) is a `State`: the
term names, static (pytree aux data, for the diagnostics' names; restored
from the `init` state when a checkpoint is loaded), and a dict of arrays.
"""
import functools
from typing import Any, Dict, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtkd_jax import errors
from mtkd_jax.weighting import base


@flax.struct.dataclass
class State:
  """A weighting method's state.

  Attributes:
    term_names: the loss terms, in the order of `losses` (static).
    arrays: the method's arrays (learnable weights, running averages, optax
      states), by name; empty for stateless methods.
  """
  term_names: Tuple[str, ...] = flax.struct.field(pytree_node=False)
  arrays: Dict[str, Any] = flax.struct.field(default_factory=dict)


def weight_diag(names: Sequence[str], coeffs: jax.Array, prefix: str = "weight"
                ) -> Dict[str, jax.Array]:
  """{"<prefix>/<term>": coeffs[t]} for logging."""
  return {f"{prefix}/{n}": coeffs[i] for i, n in enumerate(names)}


def _result(state: State, coeffs: jax.Array, arrays=None, extra=None):
  diag = weight_diag(state.term_names, coeffs)
  diag.update(extra or {})
  new_state = state if arrays is None else state.replace(arrays=arrays)
  return base.Combination(coeffs=coeffs), new_state, diag


# ----------------------------------------------------------------------------
# EW: equal (fixed) weights.


def stateless_init(term_names, *, num_shared_params=None):
  """The state of a method that keeps no arrays."""
  del num_shared_params
  return State(tuple(term_names))


def _ew_update(losses, grads, state, *, step=None, rng=None):
  """c_t = 1: the plain (fixed-weight) sum; fixed weights are in the losses."""
  del grads, step, rng
  return _result(state, jnp.ones_like(losses))


def ew() -> base.WeightingMethod:
  """Equal weighting: the fixed-weight total sum_t w_t L_t (w_t from the specs)."""
  return base.WeightingMethod(stateless_init, _ew_update, needs_grads=False)


# ----------------------------------------------------------------------------
# Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).


def _uw_init(term_names, *, lr, init_log_var, num_shared_params=None):
  del num_shared_params
  log_var = jnp.full((len(term_names),), init_log_var, jnp.float32)
  opt = optax.adam(lr).init(log_var)
  return State(tuple(term_names), {"log_var": log_var, "opt": opt})


def _uw_update(losses, grads, state, *, lr, step=None, rng=None):
  """c_t = 0.5 exp(-s_t); then one Adam step on s for the current losses."""
  del grads, step, rng
  losses = lax.stop_gradient(losses)
  s = state.arrays["log_var"]
  coeffs = 0.5 * jnp.exp(-s)
  # d/ds_t of sum_t 0.5 exp(-s_t) L_t + 0.5 s_t.
  grad_s = 0.5 - 0.5 * jnp.exp(-s) * losses
  updates, opt = optax.adam(lr).update(grad_s, state.arrays["opt"], s)
  new_s = optax.apply_updates(s, updates)
  extra = weight_diag(state.term_names, s, "uncertainty/log_var")
  return _result(state, coeffs, {"log_var": new_s, "opt": opt}, extra)


def uncertainty(lr: float = 1e-3, init_log_var: float = -0.5
                ) -> base.WeightingMethod:
  """Homoscedastic uncertainty weighting.

  Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
  Losses for Scene Geometry and Semantics", CVPR 2018. Each term has a
  learnable s_t = log sigma_t^2 and the total is

    sum_t 0.5 exp(-s_t) L_t + 0.5 s_t,

  so c_t = 0.5 exp(-s_t) = 1 / (2 sigma_t^2). The paper derives this form
  (Eq. 7) for a Gaussian likelihood (regression); for a softmax
  classification likelihood it gets exp(-s) L + 0.5 s, i.e. a factor 2 on the
  loss term (Eq. 10, with its approximation). Like LibMTL's `UW` we use the
  regression form for every term. For fixed L_t the optimum is exp(s_t) = L_t,
  i.e. c_t = 1 / (2 L_t).

  s is learned by its own `optax.adam(lr)` (the paper trains it jointly
  with the network's optimiser: set `lr` to the model's learning rate to
  match), on d/ds_t = 0.5 - 0.5 exp(-s_t) L_t for the current losses, AFTER
  the coefficients are read: the model's gradient at a step uses the
  pre-update s (as a joint gradient step would).

  Args:
    lr: the learning rate of s's own Adam.
    init_log_var: the initial s_t (-0.5, LibMTL's initialisation).
  """
  return base.WeightingMethod(
      functools.partial(_uw_init, lr=lr, init_log_var=init_log_var),
      functools.partial(_uw_update, lr=lr), needs_grads=False)


# ----------------------------------------------------------------------------
# DWA (Liu, Johns & Davison, CVPR 2019).


def _dwa_init(term_names, *, num_shared_params=None):
  del num_shared_params
  num = len(term_names)
  return State(tuple(term_names), {
      "count": jnp.zeros((), jnp.int32),  # steps into the current epoch
      "epochs": jnp.zeros((), jnp.int32),  # finished epochs
      "loss_sum": jnp.zeros((num,), jnp.float32),  # this epoch's loss sum
      "avg_1": jnp.ones((num,), jnp.float32),  # average of epoch k-1
      "avg_2": jnp.ones((num,), jnp.float32),  # average of epoch k-2
  })


def _dwa_update(losses, grads, state, *, temperature, epoch_steps, step=None,
                rng=None):
  """w_t = T softmax_t(r(k-1) / temp), r_t(k-1) = L_t(k-1) / L_t(k-2)."""
  del grads, step, rng
  a = state.arrays
  losses = lax.stop_gradient(losses)
  num = losses.shape[0]
  prev2 = a["avg_2"]
  ratio = a["avg_1"] / jnp.where(prev2 != 0, prev2, 1.0)
  weights = num * jax.nn.softmax(ratio / temperature)
  coeffs = jnp.where(a["epochs"] >= 2, weights, jnp.ones_like(weights))

  loss_sum = a["loss_sum"] + losses
  count = a["count"] + 1
  end = count >= epoch_steps
  avg = loss_sum / count.astype(loss_sum.dtype)
  arrays = {
      "count": jnp.where(end, 0, count),
      "epochs": a["epochs"] + end.astype(jnp.int32),
      "loss_sum": jnp.where(end, jnp.zeros_like(loss_sum), loss_sum),
      "avg_1": jnp.where(end, avg, a["avg_1"]),
      "avg_2": jnp.where(end, a["avg_1"], a["avg_2"]),
  }
  return _result(state, coeffs, arrays)


def dwa(temperature: float = 2.0, epoch_steps: int = 100
        ) -> base.WeightingMethod:
  """Dynamic Weight Average.

  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
  CVPR 2019, Eq. (7): w_t(k) = T exp(r_t(k-1)/temp) / sum_i exp(r_i(k-1)/temp)
  with r_t(k-1) = L_t(k-1) / L_t(k-2), L_t(k) the average training loss of
  epoch k; w_t = 1 for the first two epochs (k = 0, 1), as in their code.
  Recommender training is rarely organised in epochs, so here an "epoch" is
  every `epoch_steps` steps (counted in the state) and L_t(k) the average
  of the step losses over it.

  Args:
    temperature: the softmax temperature (2.0, the paper's).
    epoch_steps: the steps of one "epoch".
  """
  return base.WeightingMethod(
      _dwa_init, functools.partial(_dwa_update, temperature=temperature,
                                   epoch_steps=epoch_steps),
      needs_grads=False)


# ----------------------------------------------------------------------------
# RLW (Lin et al., TMLR 2022).

RLW_DISTRIBUTIONS = ("normal", "uniform", "dirichlet", "bernoulli",
                     "constrained_bernoulli")


def rlw_sample(rng: jax.Array, num: int, distribution: str) -> jax.Array:
  """RLW's loss weights, float[num], as LibMTL draws them.

  "normal"/"uniform"/"dirichlet": softmax of a N(0, I) / U(0, 1)^T /
  Dirichlet(1) sample (LibMTL applies the softmax to all three);
  "bernoulli": a Bernoulli(0.5) mask, redrawn as a random one-hot if all
  zero (LibMTL resamples until nonzero); "constrained_bernoulli": a random
  one-hot (one task per step).
  """
  if distribution == "normal":
    return jax.nn.softmax(jax.random.normal(rng, (num,)))
  if distribution == "uniform":
    return jax.nn.softmax(jax.random.uniform(rng, (num,)))
  if distribution == "dirichlet":
    return jax.nn.softmax(jax.random.dirichlet(rng, jnp.ones((num,))))
  one_rng, mask_rng = jax.random.split(rng)
  one_hot = jax.nn.one_hot(jax.random.randint(one_rng, (), 0, num), num)
  if distribution == "constrained_bernoulli":
    return one_hot
  if distribution == "bernoulli":
    mask = jax.random.bernoulli(mask_rng, 0.5, (num,)).astype(jnp.float32)
    return jnp.where(jnp.any(mask > 0), mask, one_hot)
  raise errors.ConfigError(f"Unknown rlw distribution {distribution!r}; "
                           f"valid: {', '.join(RLW_DISTRIBUTIONS)}.")


def _rlw_update(losses, grads, state, *, distribution, step=None, rng=None):
  """c = softmax(z), z ~ N(0, I) (by default), fresh each step from `rng`."""
  del grads, step
  coeffs = rlw_sample(rng, losses.shape[0], distribution)
  return _result(state, coeffs.astype(losses.dtype))


def rlw(distribution: str = "normal") -> base.WeightingMethod:
  """Random Loss Weighting.

  Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test
  for Multi-Task Learning", TMLR 2022 (arXiv:2111.10603): c = f(z) with
  z ~ p drawn anew every step; default (the paper's main variant) p = N(0, I)
  and f = softmax, so the weights are positive and sum to 1, NOT to T: this
  follows LibMTL's `RLW` (the authors' code), which uses softmax(randn)
  without multiplying by T (with Adam the overall scale hardly matters;
  with SGD it scales the learning rate by 1/T relative to EW). Other
  distributions: see `rlw_sample`. The draw uses the step's `rng` (the same
  on every device), so runs are reproducible.

  Args:
    distribution: one of RLW_DISTRIBUTIONS.
  """
  if distribution not in RLW_DISTRIBUTIONS:
    raise errors.ConfigError(f"Unknown rlw distribution {distribution!r}; "
                             f"valid: {', '.join(RLW_DISTRIBUTIONS)}.")
  return base.WeightingMethod(
      stateless_init, functools.partial(_rlw_update, distribution=distribution),
      needs_grads=False)


# ----------------------------------------------------------------------------
# FAMO (Liu et al., NeurIPS 2023).


def _famo_tx(lr, gamma) -> optax.GradientTransformation:
  # torch.optim.Adam(weight_decay=gamma): L2 added to the gradient before Adam.
  return optax.chain(optax.add_decayed_weights(gamma), optax.adam(lr))


def _famo_init(term_names, *, tx, num_shared_params=None):
  del num_shared_params
  num = len(term_names)
  logits = jnp.zeros((num,), jnp.float32)
  return State(tuple(term_names), {
      "logits": logits,
      "opt": tx.init(logits),
      "prev_losses": jnp.zeros((num,), jnp.float32),
      "has_prev": jnp.zeros((), jnp.int32),
  })


def _famo_shifted(losses, min_loss):
  # L_t - l_min_t + 1e-8 (clamped at 0 so that the log stays finite).
  return jnp.maximum(losses - min_loss, 0.0) + 1e-8


def _famo_update(losses, grads, state, *, tx, min_loss, step=None, rng=None):
  """Updates the logits with (previous, current) losses, then weighs."""
  del grads, step, rng
  a = state.arrays
  losses = lax.stop_gradient(losses)
  logits = a["logits"]
  # The logits step for the previous update: delta_t = decrease of log loss.
  delta = (jnp.log(_famo_shifted(a["prev_losses"], min_loss))
           - jnp.log(_famo_shifted(losses, min_loss)))
  z = jax.nn.softmax(logits)
  grad_logits = z * (delta - jnp.dot(z, delta))  # (d softmax/d logits)^T delta
  updates, new_opt = tx.update(grad_logits, a["opt"], logits)
  new_logits = optax.apply_updates(logits, updates)
  has_prev = a["has_prev"] > 0
  logits = jnp.where(has_prev, new_logits, logits)
  opt = jax.tree.map(lambda n, o: jnp.where(has_prev, n, o), new_opt, a["opt"])
  # The weighted loss sum_t z_t log(D_t) / sum_t (z_t / D_t).
  z = jax.nn.softmax(logits)
  ratio = z / _famo_shifted(losses, min_loss)
  coeffs = ratio / jnp.sum(ratio)
  arrays = {"logits": logits, "opt": opt, "prev_losses": losses,
            "has_prev": jnp.ones((), jnp.int32)}
  extra = weight_diag(state.term_names, z, "famo/z")
  return _result(state, coeffs, arrays, extra)


def famo(lr: float = 0.025, gamma: float = 0.01, min_loss: float = 0.0
         ) -> base.WeightingMethod:
  """Fast Adaptive Multitask Optimization.

  Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization",
  NeurIPS 2023, as in their official code (Cranial-XIX/FAMO, also LibMTL):
  logits xi (state), z = softmax(xi), D_t = L_t - l_min_t + 1e-8, and the
  model minimises sum_t z_t log(D_t) / c with c = sum_t z_t / D_t held
  constant, i.e. c_t = (z_t / D_t) / sum_i (z_i / D_i) (they sum to 1). After
  the model's step, xi takes one step of Adam(lr, L2 weight decay gamma,
  as torch's Adam(weight_decay)) on the gradient
  J_softmax(xi)^T delta, delta_t = log D_t(before) - log D_t(after): tasks
  whose loss fell less gain weight.

  Deviation: their code evaluates the "after" losses with a second forward
  pass on the same batch after the model's update. `update` only sees one
  batch's losses, so the state keeps the previous step's losses and the xi
  step for step k-1 is taken at step k with the new batch's losses (then the
  coefficients of step k use the updated xi); the first step only records
  its losses. D_t is clamped at 0 (plus 1e-8) so a loss below l_min cannot
  give NaN.

  Args:
    lr: the logits' Adam learning rate (the authors' 0.025).
    gamma: the logits' L2 weight decay (the authors' 0.01).
    min_loss: l_min_t, the same for every term (their default 0).
  """
  tx = _famo_tx(lr, gamma)
  return base.WeightingMethod(
      functools.partial(_famo_init, tx=tx),
      functools.partial(_famo_update, tx=tx, min_loss=min_loss),
      needs_grads=False)
