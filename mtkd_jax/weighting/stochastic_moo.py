"""Stochastic multi-objective methods: task weights that follow their own
dynamics across steps instead of being solved afresh at every step.

MGDA solves min_{lambda in simplex} ||sum_t lambda_t g_t||^2 on each
mini-batch; with noisy gradients that solution is a biased estimate of the
full-gradient one. These methods keep lambda (and MoCo a running estimate
of every task's gradient) in the method's state and move it by projected
gradient steps, which their papers prove convergent:

- MoDo (Chen et al., NeurIPS 2023): one projected step on lambda per update;
- SDMGrad (Xiao et al., NeurIPS 2023): a few projected steps on a
  direction-regularised objective, the update pulled towards the mean
  gradient;
- MoCo (Fernando et al., ICLR 2023): tracks each task's gradient with a
  running average y_t and steps on lambda with those.

Double sampling. MoDo and SDMGrad are defined with independent samples for
the two factors of the Gram matrix (E[G1^T G2] = E[G]^T E[G], unbiased)
and a third for the update. Here (`needs_split_gram`) the step splits its
global batch into two disjoint halves by example parity and passes their
cross Gram matrix G1^T G2 (`TaskGrads.cross`); the update combines the
full batch's gradients (the union of the halves, not a third independent
sample). LibMTL instead draws three separate batches per step.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from mtkd_jax import errors
from mtkd_jax.weighting import base
from mtkd_jax.weighting import solvers
from mtkd_jax.weighting.gradient_level import _result
from mtkd_jax.weighting.loss_level import State


def _uniform_init(term_names, *, num_shared_params=None):
  del num_shared_params
  num = len(term_names)
  return State(tuple(term_names),
               {"lambda": jnp.full((num,), 1.0 / num, jnp.float32)})


# ----------------------------------------------------------------------------
# MoDo (Chen, Fernando, Ying & Chen, NeurIPS 2023).


def modo_step(lam: jax.Array, gram: jax.Array, gamma: float, rho: float
              ) -> jax.Array:
  """MoDo's lambda update: Pi_simplex(lam - gamma (G lam + rho lam)).

  Args:
    lam: float[T] in the simplex.
    gram: float[T, T], G_ij = <g_i, g_j> (the paper: <g_i(z1), g_j(z2)>).
  Returns:
    float[T] in the simplex.
  """
  return solvers.project_to_simplex(lam - gamma * (gram @ lam + rho * lam))


def _cross(grads, name: str) -> jax.Array:
  if grads is None or grads.cross is None:
    raise ValueError(f"{name} needs the cross Gram matrix of two half-batches "
                     "(TaskGrads.cross).")
  return lax.stop_gradient(grads.cross)


def _modo_update(losses, grads, state, *, gamma, rho, step=None, rng=None):
  del losses, step, rng
  lam = modo_step(state.arrays["lambda"], _cross(grads, "modo"), gamma, rho)
  return _result(state, lam, {"lambda": lam})


def modo(gamma: float = 1e-3, rho: float = 0.1) -> base.WeightingMethod:
  """MoDo: multi-objective gradient with double sampling.

  Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
  Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS
  2023, Algorithm 1:
    lambda_{k+1} = Pi_simplex(lambda_k - gamma (G1^T G2 lambda_k
                                                 + rho lambda_k)),
    x_{k+1} = x_k - alpha G3 lambda_{k+1},
  G1, G2, G3 the task gradients on three independent samples; here G1, G2
  on the two halves of the batch and G3 on the whole batch (module
  docstring; `modo_step` on `TaskGrads.cross`). lambda (state, initially 1/T) is the projected-gradient
  iterate of min_lambda 1/2 lambda^T (G + rho I) lambda, MGDA's problem: with
  a fixed G it converges to MGDA's min-norm weights (rho = 0). The
  coefficients are lambda_{k+1}, on the shared parameters only, as in the
  authors' code (LibMTL `MoDo`: the task heads get their plain gradient).

  Args:
    gamma: lambda's step size (LibMTL's 1e-3).
    rho: lambda's l2 regularisation (LibMTL's 0.1).
  """
  return base.WeightingMethod(_uniform_init,
                              functools.partial(_modo_update, gamma=gamma, rho=rho),
                              needs_grads=True,
                              scales_specific=False, supports_rep_grad=False,
                              needs_split_gram=True)


# ----------------------------------------------------------------------------
# SDMGrad (Xiao, Ban & Ji, NeurIPS 2023).


def sdmgrad_weights(w: jax.Array, gram: jax.Array, lam: float, num_iter: int,
                    lr: float, momentum: float) -> jax.Array:
  """SDMGrad's inner loop: `num_iter` projected steps (heavy ball) on
  1/2 ||G_mat w + lam g_0||^2 over the simplex, warm-started at `w`.

  As in the authors' code, the Gram matrix is first divided by the squared
  mean gradient norm (+1e-8), the gradient of the objective is
  G w + lam mean_j G_:j, and torch's SGD(lr, momentum) is applied from a
  fresh momentum buffer (b_1 = grad, b_s = momentum b_{s-1} + grad), each
  step followed by the projection onto the simplex.

  Args:
    w: float[T] in the simplex.
    gram: float[T, T], <g_i(xi), g_j(xi')> (two samples).
  Returns:
    float[T] in the simplex.
  """
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  gg = gram / (jnp.mean(norms) ** 2 + 1e-8)
  pull = lam * jnp.mean(gg, axis=1)  # G^T g_0 with g_0 = mean_t g_t

  def body(s, carry):
    w, buf = carry
    grad = gg @ w + pull
    buf = jnp.where(s == 0, grad, momentum * buf + grad)
    return solvers.project_to_simplex(w - lr * buf), buf

  w, _ = lax.fori_loop(0, num_iter, body, (w, jnp.zeros_like(w)))
  return w


def sdmgrad_coefficients(w: jax.Array, lam: float) -> jax.Array:
  """The update (G_mat w + lam g_0) / (1 + lam) as coefficients of the g_t."""
  return (w + lam / w.shape[0]) / (1.0 + lam)


def _sdmgrad_update(losses, grads, state, *, lam, num_iter, lr, momentum,
                    step=None, rng=None):
  del losses, step, rng
  w = sdmgrad_weights(state.arrays["lambda"], _cross(grads, "sdmgrad"),
                      lam, num_iter, lr, momentum)
  coeffs = sdmgrad_coefficients(w, lam)
  return _result(state, coeffs, {"lambda": w})


def sdmgrad(lam: float = 0.3, num_iter: int = 20, lr: float = 5.0,
            momentum: float = 0.5) -> base.WeightingMethod:
  """SDMGrad: stochastic direction-oriented multi-objective gradient.

  Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
  Provable Stochastic Algorithms", NeurIPS 2023, Algorithm 1: the weights
  w (state, initially 1/T) take S projected stochastic-gradient steps on
    min_{w in simplex} 1/2 ||G w + lambda g_0||^2    (their Eq. 6 dual),
  g_0 = mean_t g_t the target direction, and the update is
  d = (G w + lambda g_0) / (1 + lambda) (`sdmgrad_weights`,
  `sdmgrad_coefficients`). lambda -> 0 gives MGDA's direction, lambda -> oo
  the mean gradient. The inner loop's G^T G is the cross Gram matrix of the
  batch's two halves, the update uses the whole batch (module docstring).
  As in the authors' code (LibMTL `SDMGrad`): the Gram matrix is normalised
  by the squared mean gradient norm, and shared parameters only.

  Args:
    lam: lambda, the pull towards the mean gradient (their 0.3).
    num_iter: S, the inner loop's steps (their 20).
    lr: the inner SGD's learning rate (their 5).
    momentum: the inner SGD's momentum (their 0.5).
  """
  if lam < 0 or num_iter < 1:
    raise errors.ConfigError(
        "sdmgrad lam must be >= 0 and num_iter >= 1, got "
        f"{lam!r}, {num_iter!r}.")
  return base.WeightingMethod(_uniform_init,
                              functools.partial(_sdmgrad_update, lam=lam,
                                                num_iter=num_iter, lr=lr,
                                                momentum=momentum),
                              needs_grads=True, scales_specific=False,
                              supports_rep_grad=False, needs_split_gram=True)


# ----------------------------------------------------------------------------
# MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, ICLR 2023).


def _moco_init(term_names, *, num_shared_params=None):
  if num_shared_params is None:
    raise ValueError("moco tracks every task's flat shared gradient: init "
                     "needs num_shared_params=P.")
  num = len(term_names)
  return State(tuple(term_names), {
      "y": jnp.zeros((num, int(num_shared_params)), jnp.float32),
      "lambda": jnp.full((num,), 1.0 / num, jnp.float32),
      "count": jnp.zeros((), jnp.int32),
  })


def moco_step(y, lam, flat, losses, count, *, beta, beta_sigma, gamma,
              gamma_sigma, rho, normalize_grads):
  """One MoCo update: new (y, lambda, count).

  h_t = g_t, or L_t g_t / (||g_t|| + 1e-8) with `normalize_grads`;
  y <- y - beta_k (y - h); lambda <- Pi_simplex(lambda - gamma_k
  (Y Y^T + rho I) lambda); beta_k = beta / k^beta_sigma,
  gamma_k = gamma / k^gamma_sigma at the k-th update.
  """
  if normalize_grads:
    norms = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
    flat = flat / (norms + 1e-8) * losses[:, None]
  count = count + 1
  k = count.astype(jnp.float32)
  beta_k = beta / k ** beta_sigma
  gamma_k = gamma / k ** gamma_sigma
  y = y - beta_k * (y - flat)
  yy = jnp.dot(y, y.T, precision=lax.Precision.HIGHEST)
  lam = solvers.project_to_simplex(lam - gamma_k * (yy @ lam + rho * lam))
  return y, lam, count


def _moco_update(losses, grads, state, *, settings, step=None, rng=None):
  del step, rng
  if grads is None or grads.flat is None:
    raise ValueError("moco needs the flat shared gradients (TaskGrads.flat).")
  a = state.arrays
  y, lam, count = moco_step(a["y"], a["lambda"], lax.stop_gradient(grads.flat),
                            lax.stop_gradient(losses), a["count"], **settings)
  return _result(state, lam, {"y": y, "lambda": lam, "count": count},
                 direction=lam @ y)


def moco(beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
         gamma_sigma: float = 0.5, rho: float = 0.0,
         normalize_grads: bool = True) -> base.WeightingMethod:
  """MoCo: stochastic multi-objective gradient correction.

  Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient
  Bias in Multi-objective Learning: A Provably Convergent Approach", ICLR
  2023, Algorithm 1 (`moco_step`): y_t tracks task t's gradient,
    y_{k+1,t} = y_{k,t} - beta_k (y_{k,t} - h_{k,t}),
    lambda_{k+1} = Pi_simplex(lambda_k - gamma_k (Y^T Y + rho I) lambda_k),
    x_{k+1} = x_k - alpha_k Y lambda_{k+1},
  so the shared parameters follow `direction` = Y lambda (their projection
  of y onto a bounded set, needed for the proof only, is omitted). As in
  the authors' code (LibMTL `MoCo`): h_t = L_t g_t / ||g_t||,
  beta_k = 0.5 / k^0.5, gamma_k = 0.1 / k^0.5, rho = 0, and the task heads
  get their plain gradient. Deviation: their code maps lambda back with a softmax; here the
  paper's Euclidean projection onto the simplex. State: y float32[T, P],
  lambda, the update count; needs the flat gradients and replicated tables.

  Args:
    beta, beta_sigma: the tracking step beta / k^beta_sigma.
    gamma, gamma_sigma: lambda's step gamma / k^gamma_sigma.
    rho: lambda's l2 regularisation.
    normalize_grads: h_t = L_t g_t / ||g_t|| (the authors' code) or g_t.
  """
  settings = dict(beta=beta, beta_sigma=beta_sigma, gamma=gamma,
                  gamma_sigma=gamma_sigma, rho=rho,
                  normalize_grads=normalize_grads)
  return base.WeightingMethod(_moco_init,
                              functools.partial(_moco_update, settings=settings),
                              needs_grads=True,
                              scales_specific=False, needs_full_grads=True,
                              supports_rep_grad=False)
