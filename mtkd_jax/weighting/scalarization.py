"""Loss scalarizations: the step minimises a scalar function of the losses.

Each method here replaces sum_t L_t by a differentiable S(L_1, ..., L_T);
its gradient is sum_t (dS/dL_t) grad L_t, so the coefficients are
c_t = dS/dL_t at the current losses (no gradient flows through them), and
they scale the task-specific parameters too (`scales_specific=True`), as
minimising S itself would. Loss-level: no per-task gradients are needed.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtkd_jax.weighting import base
from mtkd_jax.weighting.loss_level import State, _result, stateless_init
from mtkd_jax.weighting.loss_level import weight_diag

# ----------------------------------------------------------------------------
# GLS (Chennupati et al., CVPR 2019 workshops).


def gls_coefficients(losses: jax.Array) -> jax.Array:
  """dS/dL_t of S = (prod_t L_t)^(1/T): c_t = S / (T L_t).

  Computed as exp(mean log L) / (T L_t), which neither overflows nor
  underflows for many terms; losses are clamped at 1e-12 (a zero loss
  would make the geometric mean and every other coefficient 0).
  """
  safe = jnp.maximum(losses, 1e-12)
  geometric_mean = jnp.exp(jnp.mean(jnp.log(safe)))
  return geometric_mean / (losses.shape[0] * safe)


def _gls_update(losses, grads, state, *, step=None, rng=None):
  del grads, step, rng
  return _result(state, gls_coefficients(lax.stop_gradient(losses)))


def gls() -> base.WeightingMethod:
  """Geometric Loss Strategy.

  Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream
  Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning",
  CVPR 2019 workshops, Eq. (3): the total loss is the geometric mean
  (prod_t L_t)^(1/T), as in LibMTL's `GLS`; c_t = S / (T L_t)
  (`gls_coefficients`): a task's weight falls as its loss grows.
  """
  return base.WeightingMethod(stateless_init, _gls_update, needs_grads=False)


# ----------------------------------------------------------------------------
# STCH (Lin et al., ICML 2024).


def stch_coefficients(losses: jax.Array, nadir: jax.Array, mu: float
                      ) -> jax.Array:
  """dS/dL_t of S = mu T log sum_t exp(log(L_t / z_t) / mu).

  l_t = log(L_t / z_t + 1e-20) (z: the nadir point); the derivative is
  c_t = T softmax(l / mu)_t / (L_t + 1e-20 z_t): the smooth maximum of the
  normalised log losses puts most weight on the worst-off task.
  """
  num = losses.shape[0]
  scaled = losses / nadir + 1e-20
  soft = jax.nn.softmax(jnp.log(scaled) / mu)
  return num * soft / (scaled * nadir)


def _stch_init(term_names, *, num_shared_params=None):
  del num_shared_params
  num = len(term_names)
  return State(tuple(term_names), {
      "loss_sum": jnp.zeros((num,), jnp.float32),
      "count": jnp.zeros((), jnp.int32),
  })


def _stch_update(losses, grads, state, *, mu, warmup_steps, step=None,
                 rng=None):
  """Warm-up: c_t = 1 / L_t (sum of log losses), averaging the losses; then
  the smooth Tchebycheff scalarization with that average as nadir point."""
  del grads, step, rng
  a = state.arrays
  losses = lax.stop_gradient(losses)
  warm = a["count"] < warmup_steps
  nadir = a["loss_sum"] / jnp.maximum(a["count"], 1).astype(losses.dtype)
  nadir = jnp.where(a["count"] > 0, nadir, 1.0)
  coeffs = jnp.where(warm, 1.0 / (losses + 1e-20),
                     stch_coefficients(losses, nadir, mu))
  arrays = {"loss_sum": jnp.where(warm, a["loss_sum"] + losses, a["loss_sum"]),
            "count": a["count"] + warm.astype(jnp.int32)}
  return _result(state, coeffs, arrays, weight_diag(state.term_names, nadir,
                                                    "stch/nadir"))


def stch(mu: float = 1.0, warmup_steps: int = 100) -> base.WeightingMethod:
  """Smooth Tchebycheff scalarization.

  Lin, Zhang, Liu, Zhang & Zhang, "Smooth Tchebycheff Scalarization for
  Multi-Objective Optimization", ICML 2024, Eq. (7) with uniform
  preferences, as in their MTL code (and LibMTL's `STCH`): on the log losses
  normalised by a nadir point z, S = mu T log sum_t exp(log(L_t / z_t) / mu)
  (`stch_coefficients`), a smooth approximation of T max_t log(L_t / z_t).
  Their code warms up for some epochs on sum_t log L_t and takes z as the
  average loss of the last warm-up epoch; here the warm-up is the first
  `warmup_steps` steps (c_t = 1 / L_t) and z the average loss over them
  (z = 1 with no warm-up).

  Args:
    mu: the smoothing parameter.
    warmup_steps: the warm-up steps whose mean loss is the nadir point.
  """
  return base.WeightingMethod(
      _stch_init, functools.partial(_stch_update, mu=mu,
                                    warmup_steps=warmup_steps),
      needs_grads=False)


# ----------------------------------------------------------------------------
# IMTL-L (Liu et al., ICLR 2021).


def _imtl_l_init(term_names, *, lr, num_shared_params=None):
  del num_shared_params
  scales = jnp.zeros((len(term_names),), jnp.float32)
  return State(tuple(term_names), {"s": scales,
                                   "opt": optax.adam(lr).init(scales)})


def _imtl_l_update(losses, grads, state, *, lr, step=None, rng=None):
  """c_t = e^s_t; then one Adam step on s for sum_t e^s_t L_t - s_t."""
  del grads, step, rng
  losses = lax.stop_gradient(losses)
  s = state.arrays["s"]
  coeffs = jnp.exp(s)
  grad_s = jnp.exp(s) * losses - 1.0
  updates, opt = optax.adam(lr).update(grad_s, state.arrays["opt"], s)
  extra = weight_diag(state.term_names, s, "imtl_l/s")
  return _result(state, coeffs, {"s": optax.apply_updates(s, updates),
                                 "opt": opt}, extra)


def imtl_l(lr: float = 1e-3) -> base.WeightingMethod:
  """IMTL-L: impartial loss scales.

  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
  Multi-task Learning", ICLR 2021, Sec. 3.2, Eq. (3): each term is scaled to
  e^s_t L_t - s_t with a learnable s_t (state, initially 0), so that the
  scaled losses stay constant (the optimum of s_t for a fixed loss is
  e^s_t L_t = 1); c_t = e^s_t. s takes one step of `optax.adam(lr)` per
  update on d/ds_t = e^s_t L_t - 1, after the coefficients are read (the
  paper optimises s jointly with the network). Combined with IMTL-G in the
  paper ("IMTL"); `imtl` here is IMTL-G alone.

  Args:
    lr: the learning rate of s's Adam.
  """
  return base.WeightingMethod(functools.partial(_imtl_l_init, lr=lr),
                              functools.partial(_imtl_l_update, lr=lr),
                              needs_grads=False)
