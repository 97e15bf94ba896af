"""Gradient-level weighting: coefficients from the task gradients' Gram matrix.

Each method gets `grads = TaskGrads(gram, flat)` with gram float32[T, T],
G_ij = <g_i, g_j> over the shared parameters (or the shared representation,
`mode="rep"`), and returns coefficients c such that the shared update is
sum_t c_t g_t. Gradient-surgery methods modify the task gradients one by one
(PCGrad, GradVac); here a modified gradient is tracked as a row of
coefficients A_i (g_i' = sum_k A_ik g_k), so that <g_i', g_j> = (A G)_ij and
||g_i'||^2 = (A G A^T)_ii, and the final sum_i g_i' has c = sum_i A_i. Only
DB-MTL, whose direction is a running average of past gradients, needs the
flat gradients (`needs_full_grads`).

`scales_specific` follows each paper's code: loss-scaling methods (GradNorm,
MGDA, Nash-MTL, DB-MTL) weight the whole loss, so c_t (or DB-MTL's 1/L_t)
also scales task t's own parameters; surgery methods (PCGrad, GradVac,
CAGrad, IMTL-G, Aligned-MTL) change the shared gradient only.

Representation gradients: all methods here except DB-MTL reduce to
coefficients of a linear combination, so the coefficients computed from the
representation's Gram matrix can be back-propagated through the encoder
(MGDA-UB); LibMTL refuses rep-grad for PCGrad/GradVac/CAGrad/Nash-MTL only
for implementation reasons. DB-MTL's EMA is over parameter gradients.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mtkd_jax import errors
from mtkd_jax.weighting import base
from mtkd_jax.weighting import solvers
from mtkd_jax.weighting.loss_level import State, stateless_init, weight_diag


def _result(state, coeffs, arrays=None, extra=None, direction=None):
  diag = weight_diag(state.term_names, coeffs)
  diag.update(extra or {})
  new_state = state if arrays is None else state.replace(arrays=arrays)
  return base.Combination(coeffs=coeffs, direction=direction), new_state, diag


def _gram(grads) -> jax.Array:
  if grads is None:
    raise ValueError("This weighting method needs the task gradients "
                     "(TaskGrads), got None.")
  return lax.stop_gradient(grads.gram)


def _others(num: int) -> np.ndarray:
  """int[T, T-1]: row i lists the tasks other than i, in order."""
  return np.array([[j for j in range(num) if j != i] for i in range(num)],
                  dtype=np.int32).reshape(num, num - 1)


def _random_orders(rng: jax.Array, num: int) -> jax.Array:
  """int[T, T-1]: for each task i, the other tasks in a random order."""
  keys = jax.random.split(rng, num)
  perms = jax.vmap(lambda k: jax.random.permutation(k, num - 1))(keys)
  return jnp.take_along_axis(jnp.asarray(_others(num)), perms, axis=1)


# ----------------------------------------------------------------------------
# GradNorm (Chen et al., ICML 2018).


def _gradnorm_init(term_names, *, lr, num_shared_params=None):
  del num_shared_params
  num = len(term_names)
  w = jnp.ones((num,), jnp.float32)
  return State(tuple(term_names), {
      "w": w,
      "opt": optax.adam(lr).init(w),
      "initial_losses": jnp.zeros((num,), jnp.float32),
      "has_initial": jnp.zeros((), jnp.int32),
  })


def _gradnorm_update(losses, grads, state, *, alpha, lr, step=None, rng=None):
  """c = w; then one step on L_grad = sum_t |w_t ||g_t|| - target_t|."""
  del step, rng
  gram = _gram(grads)
  a = state.arrays
  losses = lax.stop_gradient(losses)
  num = losses.shape[0]
  w = a["w"]
  initial = jnp.where(a["has_initial"] > 0, a["initial_losses"], losses)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))  # ||grad_W L_t||
  gw = w * norms  # G_W^(t)
  # Inverse training rates r_t = L~_t / mean L~, L~_t = L_t / L_t(0).
  tilde = losses / jnp.where(initial != 0, initial, 1.0)
  mean_tilde = jnp.mean(tilde)
  r = tilde / jnp.where(mean_tilde != 0, mean_tilde, 1.0)
  target = jnp.mean(gw) * jnp.maximum(r, 0.0) ** alpha  # constant
  loss_grad = jnp.sum(jnp.abs(gw - target))
  grad_w = jnp.sign(gw - target) * norms  # d L_grad / d w_t
  updates, opt = optax.adam(lr).update(grad_w, a["opt"], w)
  new_w = jnp.maximum(optax.apply_updates(w, updates), 1e-6)
  new_w = new_w * (num / jnp.sum(new_w))  # renormalise: sum_t w_t = T
  arrays = {"w": new_w, "opt": opt, "initial_losses": initial,
            "has_initial": jnp.ones((), jnp.int32)}
  return _result(state, w, arrays, {"gradnorm/loss_grad": loss_grad})


def gradnorm(alpha: float = 1.5, lr: float = 0.025) -> base.WeightingMethod:
  """GradNorm.

  Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization
  for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018,
  Algorithm 1: learnable loss weights w_t (state, initially 1);
  G_W^(t) = w_t ||grad_W L_t|| (W: the shared parameters the step
  differentiates, or the representation with `mode="rep"`; the paper uses
  the last shared layer), r_t = L~_t / mean_i L~_i with L~_t = L_t / L_t(0)
  (L_t(0): the losses of the first update, stored in the state),
  L_grad = sum_t |G_W^(t) - mean_i(G_W^(i)) r_t^alpha| with the target held
  constant, w <- w - step(dL_grad/dw), then w renormalised to sum_t w_t = T.

  The coefficients of a step are the pre-update w (the paper updates w after
  the model's step). The w step is Adam(lr) (the paper uses the network's
  optimiser; Adam makes the step independent of the gradients' scale); w is
  floored at 1e-6 before the renormalisation so that it stays positive.

  Args:
    alpha: the restoring force's asymmetry (1.5).
    lr: the learning rate of w's Adam.
  """
  return base.WeightingMethod(
      functools.partial(_gradnorm_init, lr=lr),
      functools.partial(_gradnorm_update, alpha=alpha, lr=lr),
      needs_grads=True, scales_specific=True)


# ----------------------------------------------------------------------------
# PCGrad (Yu et al., NeurIPS 2020).


def pcgrad_coefficients(gram: jax.Array, rng: jax.Array) -> jax.Array:
  """The matrix A of PCGrad's projected gradients g_i' = sum_k A_ik g_k.

  For each task i, for the other tasks j in a random order (from `rng`): if
  <g_i', g_j> < 0, g_i' <- g_i' - <g_i', g_j> / ||g_j||^2 g_j (g_j the
  ORIGINAL gradient).

  Args:
    gram: float[T, T].
    rng: PRNG key of the task orders.
  Returns:
    float[T, T].
  """
  num = gram.shape[0]
  eye = jnp.eye(num, dtype=gram.dtype)
  if num == 1:
    return eye
  g = solvers.normalize_gram(gram)
  orders = _random_orders(rng, num)

  def row(a, order):
    def body(k, a):
      j = order[k]
      dot = a @ g[:, j]  # <g_i', g_j>
      gjj = g[j, j]
      conflict = (dot < 0) & (gjj > solvers.ZERO_NORM_SQ)
      return a.at[j].add(jnp.where(conflict, -dot / jnp.where(conflict, gjj, 1.0), 0.0))
    return lax.fori_loop(0, num - 1, body, a)

  return jax.vmap(row)(eye, orders)


def _pcgrad_update(losses, grads, state, *, step=None, rng=None):
  del losses, step
  gram = _gram(grads)
  coeffs = jnp.sum(pcgrad_coefficients(gram, rng), axis=0)
  return _result(state, coeffs)


def pcgrad() -> base.WeightingMethod:
  """PCGrad: project conflicting gradients.

  Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task
  Learning", NeurIPS 2020, Algorithm 1 (`pcgrad_coefficients`); the update is
  sum_i g_i', so c = sum_i A_i. The random task order per i comes from the
  step's `rng` (the same on every device). Their code also visits j = i in
  the shuffled list (a no-op unless g_i' has turned against g_i); here only
  the other tasks, as in the paper's text. Shared parameters only.
  """
  return base.WeightingMethod(stateless_init, _pcgrad_update,
                              needs_grads=True, scales_specific=False)


# ----------------------------------------------------------------------------
# GradVac (Wang et al., ICLR 2021).


def gradvac_coefficients(gram: jax.Array, phi_hat: jax.Array, rng: jax.Array,
                         beta: float):
  """GradVac's modified gradients (as coefficients) and new targets.

  For each task i and the other tasks j in a random order:
  phi_ij = cos(g_i', g_j); if phi_ij < phi_hat_ij,
    g_i' += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
            / (||g_j|| sqrt(1 - phi_hat^2)) g_j;
  then (always) phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij.

  Args:
    gram: float[T, T].
    phi_hat: float[T, T], the EMA targets (diagonal unused).
    rng: PRNG key of the task orders.
    beta: the EMA rate.
  Returns:
    (A float[T, T] with g_i' = sum_k A_ik g_k, new phi_hat float[T, T]).
  """
  num = gram.shape[0]
  eye = jnp.eye(num, dtype=gram.dtype)
  if num == 1:
    return eye, phi_hat
  g = solvers.normalize_gram(gram)
  orders = _random_orders(rng, num)
  eps = 1e-8

  def row(a, phi_row, order):
    def body(k, carry):
      a, phi_row = carry
      j = order[k]
      dot = a @ g[:, j]
      norm_i = jnp.sqrt(jnp.maximum(a @ g @ a, 0.0))
      norm_j = jnp.sqrt(jnp.maximum(g[j, j], 0.0))
      phi = jnp.clip(dot / (norm_i * norm_j + eps), -1.0, 1.0)
      target = phi_row[j]
      sqrt_phi = jnp.sqrt(jnp.maximum(1.0 - phi * phi, 0.0))
      sqrt_target = jnp.sqrt(jnp.maximum(1.0 - target * target, 0.0))
      w = norm_i * (target * sqrt_phi - phi * sqrt_target) / (
          norm_j * sqrt_target + eps)
      nonzero = (norm_i * norm_i > solvers.ZERO_NORM_SQ) & (
          g[j, j] > solvers.ZERO_NORM_SQ)
      a = a.at[j].add(jnp.where((phi < target) & nonzero, w, 0.0))
      phi_row = phi_row.at[j].set((1.0 - beta) * target + beta * phi)
      return a, phi_row
    return lax.fori_loop(0, num - 1, body, (a, phi_row))

  return jax.vmap(row)(eye, phi_hat, orders)


def _gradvac_init(term_names, *, num_shared_params=None):
  del num_shared_params
  num = len(term_names)
  return State(tuple(term_names), {"phi_hat": jnp.zeros((num, num), jnp.float32)})


def _gradvac_update(losses, grads, state, *, beta, step=None, rng=None):
  del losses, step
  gram = _gram(grads)
  a, phi_hat = gradvac_coefficients(gram, state.arrays["phi_hat"], rng, beta)
  coeffs = jnp.sum(a, axis=0)
  names = state.term_names
  extra = {f"gradvac/phi_hat/{names[i]}/{names[j]}": phi_hat[i, j]
           for i, j in itertools.permutations(range(len(names)), 2)}
  return _result(state, coeffs, {"phi_hat": phi_hat}, extra)


def gradvac(beta: float = 0.01) -> base.WeightingMethod:
  """Gradient Vaccine.

  Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving
  Multi-task Optimization in Massively Multilingual Models", ICLR 2021,
  Algorithm 1 on the whole shared gradient (`gradvac_coefficients`); the
  update is sum_i g_i', c = sum_i A_i. Targets phi_hat (state, initially 0)
  follow an EMA with rate `beta`, updated for every visited pair as in the
  paper (LibMTL updates it only when the pair was corrected). With
  phi_hat = 0 the correction is PCGrad's projection. The task order per i
  comes from `rng`. Shared parameters only.

  Args:
    beta: the EMA rate of the cosine targets (the paper's 1e-2).
  """
  return base.WeightingMethod(
      _gradvac_init, functools.partial(_gradvac_update, beta=beta),
      needs_grads=True, scales_specific=False)


# ----------------------------------------------------------------------------
# MGDA (Sener & Koltun, NeurIPS 2018).

MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda_normalizers(gram: jax.Array, losses: jax.Array, kind: str) -> jax.Array:
  """Sener & Koltun's `gradient_normalizers`: gn_t divides g_t before solving.

  "l2": ||g_t||; "loss": L_t; "loss+": L_t ||g_t||; "none": 1. A zero (or
  negative) normaliser is replaced by 1.
  """
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  if kind == "none":
    gn = jnp.ones_like(norms)
  elif kind == "l2":
    gn = norms
  elif kind == "loss":
    gn = losses
  elif kind == "loss+":
    gn = losses * norms
  else:
    raise errors.ConfigError(f"Unknown mgda normalization {kind!r}; valid: "
                             f"{', '.join(MGDA_NORMALIZATIONS)}.")
  return jnp.where(gn > 0, gn, 1.0)


def _mgda_update(losses, grads, state, *, normalization, step=None, rng=None):
  del step, rng
  gram = _gram(grads)
  gn = mgda_normalizers(gram, lax.stop_gradient(losses), normalization)
  sol, cost = solvers.min_norm_element(gram / (gn[:, None] * gn[None, :]))
  return _result(state, sol, extra={"mgda/min_norm": jnp.sqrt(jnp.maximum(cost, 0.0))})


def mgda(normalization: str = "none") -> base.WeightingMethod:
  """MGDA (MGDA-UB with `mode="rep"`).

  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018: the min-norm point of the convex hull of the (normalised)
  task gradients, solved exactly (`solvers.min_norm_element`, by
  enumerating the simplex's faces; their Frank-Wolfe-type solver stops
  after 250 iterations, short of the minimiser on ill-conditioned
  gradients). With `mode="rep"` the gradients are
  those of the shared representation: MGDA-UB (their Theorem 1).

  Normalisation (`normalization`: "none" (default), "l2", "loss", "loss+")
  divides g_t by gn_t before solving. As in their training code the
  simplex weights are then used as loss scales (c_t = w_t, also on the
  task-specific parameters: `scales_specific=True`) on the UNnormalised
  gradients; LibMTL instead combines the normalised gradients (w_t / gn_t).
  The weights sum to 1 (not T). Deviation: the exact minimiser has weights
  exactly 1/0 where their 2-task line search returns 0.999/0.001.

  Args:
    normalization: one of MGDA_NORMALIZATIONS.
  """
  mgda_normalizers(jnp.eye(1), jnp.ones(1), normalization)  # a bad name fails
  return base.WeightingMethod(
      stateless_init, functools.partial(_mgda_update, normalization=normalization),
      needs_grads=True, scales_specific=True)


# ----------------------------------------------------------------------------
# CAGrad (Liu et al., NeurIPS 2021).


def cagrad_combination(gram: jax.Array, c: float, rescale: int = 1
                       ) -> jax.Array:
  """CAGrad's coefficients: d = (g_0 + lam g_w) / rescale = sum_t c_t g_t.

  Args:
    gram: float[T, T].
    c: CAGrad's c (0: the mean gradient, exactly).
    rescale: 0: no rescaling, 1: divide by 1 + c^2, 2: divide by 1 + c.
  Returns:
    float[T].
  """
  num = gram.shape[0]
  w, lam = solvers.cagrad_weights(gram, c)
  coeffs = jnp.full((num,), 1.0 / num, gram.dtype) + lam * w
  if rescale == 0:
    return coeffs
  if rescale == 1:
    return coeffs / (1.0 + c * c)
  if rescale == 2:
    return coeffs / (1.0 + c)
  raise errors.ConfigError(f"cagrad rescale must be 0, 1 or 2, got {rescale!r}.")


def _cagrad_update(losses, grads, state, *, c, rescale, step=None, rng=None):
  del losses, step, rng
  return _result(state, cagrad_combination(_gram(grads), c, rescale))


def cagrad(c: float = 0.4, rescale: int = 1) -> base.WeightingMethod:
  """Conflict-Averse Gradient descent.

  Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
  Multi-task Learning", NeurIPS 2021, Algorithm 1: g_0 = mean_t g_t,
  phi = c^2 ||g_0||^2, w* = argmin_{w in simplex} g_w^T g_0 + sqrt(phi)
  ||g_w||, d = g_0 + sqrt(phi) / ||g_w*|| g_w*, then (their code,
  rescale=1) d / (1 + c^2). Their code solves for w with scipy's SLSQP; here
  the exact jittable solver `solvers.cagrad_weights` (face enumeration).
  c = 0 gives exactly the mean gradient (their code adds 1e-8 to
  sqrt(phi); we do not). Shared parameters only.

  Args:
    c: the conflict-aversion radius (0.4, the paper's value for
      NYUv2/Cityscapes).
    rescale: 0: none, 1: d / (1 + c^2) (their code's default), 2: d / (1 + c).
  """
  if rescale not in (0, 1, 2):
    raise errors.ConfigError(f"cagrad rescale must be 0, 1 or 2, got {rescale!r}.")
  return base.WeightingMethod(
      stateless_init, functools.partial(_cagrad_update, c=c, rescale=rescale),
      needs_grads=True, scales_specific=False)


# ----------------------------------------------------------------------------
# IMTL-G (Liu et al., ICLR 2021).


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  """IMTL-G's closed form: alpha with equal projections onto every u_t.

  The paper's alpha_{2:T} = g_1 U^T (D U^T)^-1 (u_t = g_t / ||g_t||,
  D = [g_1 - g_t], U = [u_1 - u_t]) is the alpha with sum_t alpha_t = 1 and
  <sum_s alpha_s g_s, u_t> equal for every t. Written with beta_t =
  alpha_t ||g_t||, the combination is sum_t beta_t u_t and the condition
  reads C beta = lambda 1 (C the gradients' cosine matrix), so
  alpha = D^-1 C^-1 1, normalised to sum 1. Solving on C rather than on the
  (T-1)x(T-1) system keeps float32 accurate when the gradients' norms
  differ by orders of magnitude (tests: equal projections to 1e-4 at norm
  ratios up to 1e4, T = 2..8, where the paper's form loses 2% at T = 8).
  C is inverted with a pseudo-inverse (singular values below 1e-6 of the
  largest dropped), so parallel gradients give finite weights; a zero
  gradient gets alpha_t = 0, and all-zero gradients 1/T each.

  Args:
    gram: float[T, T].
  Returns:
    alpha float[T], summing to 1 (entries may be negative).
  """
  num = gram.shape[0]
  if num == 1:
    return jnp.ones((1,), gram.dtype)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  nonzero = norms * norms > solvers.ZERO_NORM_SQ * jnp.max(norms * norms)
  nonzero &= norms > 0
  d = jnp.where(nonzero, norms, 1.0)
  cos = jnp.where(nonzero[:, None] & nonzero[None, :],
                  gram / (d[:, None] * d[None, :]), 0.0)
  u, s, vt = jnp.linalg.svd(cos)
  keep = s > 1e-6 * jnp.maximum(jnp.max(s), 1e-30)
  s_inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
  beta = vt.T @ (s_inv * (u.T @ nonzero.astype(gram.dtype)))
  alpha = jnp.where(nonzero, beta / d, 0.0)
  total = jnp.sum(alpha)
  ok = jnp.abs(total) > 1e-30
  return jnp.where(ok, alpha / jnp.where(ok, total, 1.0), 1.0 / num)


def _imtl_update(losses, grads, state, *, step=None, rng=None):
  del losses, step, rng
  return _result(state, imtl_g_weights(_gram(grads)))


def imtl() -> base.WeightingMethod:
  """IMTL-G: impartial (gradient) multi-task learning.

  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
  Multi-task Learning", ICLR 2021, Eq. (9) (`imtl_g_weights`): the combined
  shared gradient sum_t alpha_t g_t has equal projections onto every unit
  task gradient, with sum_t alpha_t = 1. As in the paper (and LibMTL), the
  task-specific parameters follow their own (unscaled) loss gradients
  (`scales_specific=False`). IMTL-L (learnable loss scales e^s_t L_t - s_t)
  is not implemented: its scales would have to multiply the task-specific
  gradients too, which this interface's single coefficient vector cannot
  express together with IMTL-G's shared-only alpha (and IMTL-G's combined
  direction does not depend on per-task gradient scales).
  """
  return base.WeightingMethod(stateless_init, _imtl_update, needs_grads=True,
                              scales_specific=False)


# ----------------------------------------------------------------------------
# Nash-MTL (Navon et al., ICML 2022).


def _nash_update(losses, grads, state, *, max_iter, step=None, rng=None):
  del losses, step, rng
  gram = _gram(grads)
  alpha = solvers.nash_weights(gram, max_iter)
  residual = jnp.max(jnp.abs(alpha * (gram @ alpha) - 1.0))
  return _result(state, alpha, extra={"nash/residual": residual})


def nash_mtl(max_iter: int = 20) -> base.WeightingMethod:
  """Nash-MTL: multi-task learning as a bargaining game.

  Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task
  Learning as a Bargaining Game", ICML 2022: the Nash bargaining solution
  alpha > 0 with G alpha = 1 / alpha (elementwise); the update is
  sum_t alpha_t g_t (its norm is sqrt(T) by construction). As in their code
  alpha weights the losses (`scales_specific=True`). Their code solves a
  sequence of cvxpy problems (`optim_niter` = 20); here damped Newton on the
  equivalent convex problem to float accuracy (`solvers.nash_weights`).
  Their code also clips the shared gradient's norm to `max_norm` = 1.0 and
  can update alpha every k steps; neither is done here (use the optimizer's
  `grad_clip_norm`).

  Args:
    max_iter: the most Newton steps (it stops at float accuracy, usually
      after fewer than 10).
  """
  return base.WeightingMethod(
      stateless_init, functools.partial(_nash_update, max_iter=max_iter),
      needs_grads=True, scales_specific=True)


# ----------------------------------------------------------------------------
# Aligned-MTL (Senushkin et al., CVPR 2023).

ALIGNED_SCALE_MODES = ("min", "median", "rmse")


def aligned_mtl_matrix(gram: jax.Array, scale_mode: str = "min") -> jax.Array:
  """B with aligned gradients G' = G_mat B (G_mat = [g_1 ... g_T], P x T).

  Eigendecomposition gram = V Lambda V^T; eigenvalues below
  max(Lambda) T eps are dropped (the rank, as in their code);
  B = sigma V Lambda^-1/2 V^T over the kept ones, with sigma = sqrt of the
  smallest kept eigenvalue ("min", the paper's), of their lower median
  ("median"), or of their mean ("rmse"). Then G'^T G' = sigma^2 I on the
  gradients' span: the aligned gradients are orthogonal with equal norms
  (condition number 1).

  Args:
    gram: float[T, T].
    scale_mode: "min", "median" or "rmse".
  Returns:
    float[T, T] (zeros if every gradient is zero).
  """
  if scale_mode not in ALIGNED_SCALE_MODES:
    raise errors.ConfigError(f"Unknown aligned_mtl scale_mode {scale_mode!r}; "
                             f"valid: {', '.join(ALIGNED_SCALE_MODES)}.")
  num = gram.shape[0]
  lam, v = jnp.linalg.eigh(0.5 * (gram + gram.T))  # ascending
  tol = jnp.max(lam) * num * jnp.finfo(gram.dtype).eps
  keep = lam > jnp.maximum(tol, 0.0)
  lam_kept = jnp.where(keep, lam, 0.0)
  rank = jnp.sum(keep)
  if scale_mode == "min":
    sigma2 = jnp.min(jnp.where(keep, lam, jnp.inf))
  elif scale_mode == "rmse":
    sigma2 = jnp.sum(lam_kept) / jnp.maximum(rank, 1)
  else:  # lower median of the kept eigenvalues (torch.median)
    # Ascending order puts the dropped ones first: kept = lam[num-rank:].
    sigma2 = lam[num - rank + (rank - 1) // 2]
  sigma2 = jnp.where(rank > 0, sigma2, 0.0)
  inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
  return jnp.sqrt(sigma2) * (v * inv_sqrt[None, :]) @ v.T


def _aligned_update(losses, grads, state, *, scale_mode, step=None, rng=None):
  del losses, step, rng
  b = aligned_mtl_matrix(_gram(grads), scale_mode)
  return _result(state, jnp.sum(b, axis=1))


def aligned_mtl(scale_mode: str = "min") -> base.WeightingMethod:
  """Aligned-MTL: independent component alignment.

  Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment
  for Multi-Task Learning", CVPR 2023: the gradient matrix is replaced by the
  closest (Procrustes) matrix with orthogonal columns of equal norms,
  G' = G_mat B (`aligned_mtl_matrix`), and the update is the SUM of the
  aligned gradients (their code: `grads.sum(-1)`, LibMTL `alpha = B.sum(0)`;
  pre-weights 1), so c = B 1. Shared parameters only.

  Args:
    scale_mode: how sigma is picked, one of ALIGNED_SCALE_MODES ("min", the
      authors' default).
  """
  if scale_mode not in ALIGNED_SCALE_MODES:
    raise errors.ConfigError(f"Unknown aligned_mtl scale_mode {scale_mode!r}; "
                             f"valid: {', '.join(ALIGNED_SCALE_MODES)}.")
  return base.WeightingMethod(
      stateless_init, functools.partial(_aligned_update, scale_mode=scale_mode),
      needs_grads=True, scales_specific=False)


# ----------------------------------------------------------------------------
# DB-MTL (Lin et al., 2023).


def _dbmtl_init(term_names, *, num_shared_params=None):
  if num_shared_params is None:
    raise ValueError("dbmtl keeps a running average of the flat shared "
                     "gradients: init needs num_shared_params=P.")
  num = len(term_names)
  return State(tuple(term_names), {
      "ema": jnp.zeros((num, int(num_shared_params)), jnp.float32),
      "count": jnp.zeros((), jnp.int32),
  })


def _dbmtl_update(losses, grads, state, *, beta, beta_sigma, eps, step=None,
                  rng=None):
  """EMA of the log-loss gradients, rescaled to the largest one's norm."""
  del step, rng
  if grads is None or grads.flat is None:
    raise ValueError("dbmtl needs the flat shared gradients (TaskGrads.flat).")
  a = state.arrays
  losses = lax.stop_gradient(losses)
  flat = lax.stop_gradient(grads.flat)
  inv_loss = 1.0 / (jnp.maximum(losses, 0.0) + eps)
  batch = flat * inv_loss[:, None]  # grad of log(L_t + eps)
  count = a["count"] + 1
  decay = beta / count.astype(jnp.float32) ** beta_sigma
  ema = batch + decay * (a["ema"] - batch)
  norms = jnp.sqrt(jnp.sum(ema * ema, axis=1))
  scale = jnp.max(norms) / (norms + 1e-8)
  direction = scale @ ema
  extra = weight_diag(state.term_names, scale, "dbmtl/scale")
  return _result(state, inv_loss, {"ema": ema, "count": count}, extra,
                 direction=direction)


def dbmtl(beta: float = 0.9, beta_sigma: float = 0.5, eps: float = 1e-8
          ) -> base.WeightingMethod:
  """DB-MTL: dual-balancing multi-task learning.

  Lin, Ye, Xu, Shi & Zhang, "Dual-Balancing for Multi-Task Learning", 2023
  (arXiv:2308.12029), as in LibMTL's `DB_MTL` (the authors' code). Loss
  balancing: each term's loss is log(L_t + eps), whose gradient is
  g_t / (L_t + eps). Gradient balancing on the shared parameters: an EMA of
  those gradients, ghat_t <- b_k ghat_t + (1 - b_k) g_t / (L_t + eps) with
  b_k = beta / k^beta_sigma at the k-th update (state, from 0),
  and the direction sum_t (max_i ||ghat_i|| / ||ghat_t||) ghat_t: every
  task's averaged gradient rescaled to the largest norm. So on the shared
  parameters the step follows `direction`, and the coefficients
  c_t = 1 / (L_t + eps) scale the task-specific
  gradients: those follow the plain log-loss gradient without EMA or
  rescaling, as in their code. Losses are clamped at 0 before the log.
  Needs the flat gradients (`needs_full_grads`) and, in `init`,
  `num_shared_params`; no representation-gradient mode.

  Args:
    beta: the EMA rate's numerator (their 0.9).
    beta_sigma: the EMA rate's decay exponent (their 0.5).
    eps: added to the losses inside the log (their 1e-8).
  """
  return base.WeightingMethod(_dbmtl_init,
                              functools.partial(_dbmtl_update, beta=beta,
                                                beta_sigma=beta_sigma, eps=eps),
                              needs_grads=True,
                              scales_specific=True, needs_full_grads=True,
                              supports_rep_grad=False)
