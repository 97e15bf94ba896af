"""Small jittable solvers on Gram matrices: simplex projection, min-norm, QPs.

Gradient-level weighting methods only see the Gram matrix G_ij = <g_i, g_j>
of the task gradients, so every solver here works on G (float32[T, T]) and
returns weights (float32[T]) on the task gradients; the combined gradient is
sum_t w_t g_t, whose squared norm is w^T G w. All loops have a fixed maximum
number of iterations (`lax.fori_loop` / `lax.while_loop`), so the solvers
compile once under `jax.jit` for any T >= 1 (T is static: it is a shape).

Most weightings are invariant to a positive rescaling of G (all gradients
scaled alike), so the solvers first divide G by its mean diagonal
(`normalize_gram`): their tolerances then do not depend on the gradients'
scale, which in float32 ranges over many orders of magnitude.
"""
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mtkd_jax import errors

# A squared gradient norm (relative to the mean, after `normalize_gram`) below
# this counts as a zero gradient.
ZERO_NORM_SQ = 1e-20


def normalize_gram(gram: jax.Array) -> jax.Array:
  """G / mean_t G_tt, or G itself when every gradient is zero.

  Args:
    gram: float[T, T], a Gram matrix.
  Returns:
    float[T, T] with mean diagonal 1 (or all zeros).
  """
  scale = jnp.mean(jnp.diag(gram))
  return gram / jnp.where(scale > 0, scale, 1.0)


def project_to_simplex(y: jax.Array) -> jax.Array:
  """Euclidean projection of y onto {w : w >= 0, sum w = 1}.

  The sort-based algorithm of Held, Wolfe & Crowder (1974) (see Duchi et al.,
  ICML 2008, Fig. 1), the same projection as `_projection2simplex` in Sener &
  Koltun's MGDA code.

  Args:
    y: float[T].
  Returns:
    float[T], the closest point of the probability simplex.
  """
  n = y.shape[0]
  u = jnp.sort(y)[::-1]
  css = jnp.cumsum(u) - 1.0
  k = jnp.arange(1, n + 1, dtype=y.dtype)
  rho = jnp.sum(u - css / k > 0)  # >= 1: u_1 - (u_1 - 1) / 1 = 1 > 0
  theta = css[rho - 1] / rho.astype(y.dtype)
  return jnp.maximum(y - theta, 0.0)


def min_norm_2(v11, v12, v22) -> Tuple[jax.Array, jax.Array]:
  """Min-norm point of the segment [v1, v2] from its inner products.

  Solves min_{gamma in [0, 1]} ||gamma v1 + (1 - gamma) v2||^2 in closed form
  (Sener & Koltun, NeurIPS 2018, Algorithm 1 / `_min_norm_element_from2`).
  Their code returns gamma = 0.999 (0.001) at the ends of the segment; this
  returns the exact minimiser 1 (0).

  Args:
    v11, v12, v22: scalars <v1, v1>, <v1, v2>, <v2, v2>.
  Returns:
    (gamma, cost): the weight of v1 and the squared norm of the minimiser.
  """
  denom = v11 + v22 - 2.0 * v12  # ||v1 - v2||^2
  safe = jnp.where(denom > 0, denom, 1.0)
  gamma = jnp.where(denom > 0, jnp.clip((v22 - v12) / safe, 0.0, 1.0), 1.0)
  cost = (gamma * gamma * v11 + 2.0 * gamma * (1.0 - gamma) * v12
          + (1.0 - gamma) ** 2 * v22)
  return gamma, cost


MAX_ENUMERATED_TASKS = 12


def _check_enumerable(num: int, what: str) -> None:
  if num > MAX_ENUMERATED_TASKS:
    raise errors.ConfigError(
        f"{what} enumerates the 2^T - 1 faces of the simplex exactly; T = {num} "
        f"terms is more than the {MAX_ENUMERATED_TASKS} it supports.")


def faces(num: int) -> np.ndarray:
  """bool[2^T - 1, T]: every nonempty subset of the T tasks (a simplex face)."""
  idx = np.arange(1, 2 ** num)
  return ((idx[:, None] >> np.arange(num)[None, :]) & 1) == 1


def _jacobi_scale(gram: jax.Array) -> jax.Array:
  """d with G_ij / (d_i d_j) of unit diagonal (d_t = 1 for a zero gradient)."""
  diag = jnp.diag(gram)
  nonzero = diag > ZERO_NORM_SQ * jnp.maximum(jnp.max(diag), 0.0)
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, diag, 1.0)), 1.0)


def _face_solve(gram: jax.Array, masks: np.ndarray, rhs: jax.Array,
                total: jax.Array) -> jax.Array:
  """x on every face S with [G_SS 1; 1^T 0] [x_S; nu] = [r_S; s], x_{~S} = 0.

  The stationarity conditions of a quadratic on the affine hull of a face.
  Solved in Jacobi-scaled variables (x = y / d, `_jacobi_scale`), so that
  the accuracy does not depend on the gradients' norms. A singular face
  (affinely dependent gradients) may give non-finite or meaningless x:
  callers only use x as candidates whose objective they evaluate.

  Args:
    gram: float[T, T].
    masks: bool[F, T], the faces.
    rhs: float[K, T], K right-hand sides r.
    total: float[K], their s.
  Returns:
    float[F, K, T].
  """
  num = gram.shape[0]
  d = _jacobi_scale(gram)
  corr = gram / (d[:, None] * d[None, :])
  m = jnp.asarray(masks, gram.dtype)  # [F, T]
  eye = jnp.eye(num, dtype=gram.dtype)
  top = m[:, :, None] * m[:, None, :] * corr + (1.0 - m)[:, :, None] * eye
  border = m / d  # [F, T]
  mat = jnp.concatenate([
      jnp.concatenate([top, border[:, :, None]], axis=2),
      jnp.concatenate([border[:, None, :],
                       jnp.zeros((m.shape[0], 1, 1), gram.dtype)], axis=2)],
      axis=1)  # [F, T+1, T+1]
  b = jnp.concatenate([m[:, None, :] * (rhs / d)[None],
                       jnp.broadcast_to(total[None, :, None],
                                        (m.shape[0], rhs.shape[0], 1))], axis=2)
  y = jnp.linalg.solve(mat[:, None], b[..., None])[..., 0]  # [F, K, T+1]
  return y[..., :num] / d


def _to_simplex(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(max(x, 0) / sum, valid): a point of the simplex from a candidate x."""
  pos = jnp.maximum(jnp.where(jnp.isfinite(x), x, 0.0), 0.0)
  total = jnp.sum(pos, axis=-1, keepdims=True)
  valid = jnp.all(jnp.isfinite(x), axis=-1) & (total[..., 0] > 0)
  return pos / jnp.where(total > 0, total, 1.0), valid


def _best_candidate(candidates, valid, objective):
  """The candidate (float[N, T]) with the least objective among the valid."""
  values = jax.vmap(objective)(candidates)
  values = jnp.where(valid & jnp.isfinite(values), values, jnp.inf)
  return candidates[jnp.argmin(values)]


def min_norm_element(gram: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Min-norm point of the convex hull of the task gradients (MGDA), exactly.

  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018: min_{w in simplex} w^T G w. Their Frank-Wolfe-type solver
  stops after at most 250 iterations, far from the minimiser on
  ill-conditioned gradients; here the QP is solved by enumerating the
  simplex's faces (2^T - 1, T <= `MAX_ENUMERATED_TASKS`): on each face the
  stationary point of the quadratic on its affine hull (`_face_solve`),
  projected onto the simplex; the best of these feasible points is returned.
  Some minimiser has affinely independent gradients on its support, and it
  is the stationary point of that face, so the result is the minimiser up to
  floating-point rounding (tests: within 1e-6 (float64) / 1e-4 (float32)
  relative to scipy's, gradient norm ratios up to 1e4, T = 2..8).

  Args:
    gram: float[T, T], G_ij = <g_i, g_j> (any positive scale).
  Returns:
    (w, cost): w float[T] on the simplex minimising w^T G w, and that
    minimum w^T G w.
  """
  num = gram.shape[0]
  if num == 1:
    return jnp.ones((1,), gram.dtype), gram[0, 0]
  _check_enumerable(num, "MGDA's min-norm solver")
  g = normalize_gram(gram)  # same minimiser
  x = _face_solve(g, faces(num), jnp.zeros((1, num), g.dtype),
                  jnp.ones((1,), g.dtype))[:, 0]
  candidates, valid = _to_simplex(x)
  sol = _best_candidate(candidates, valid, lambda w: w @ g @ w)
  return sol, sol @ gram @ sol


def _best_step(decrease, x, direction, step0, num_halvings: int):
  """x + t * direction for the t in {0, step0 * 2^-k} with the least f.

  A vectorised backtracking line search with no data-dependent loop: every
  candidate step is evaluated and the best kept (t = 0 included, so f never
  increases). `decrease(x, s)` is f(x + s) - f(x), computed without the
  cancellation of subtracting two float32 values of f (which would limit the
  solvers' accuracy to sqrt(eps)); it returns NaN or +inf for an infeasible
  x + s.
  """
  steps = step0 * 2.0 ** -jnp.arange(num_halvings + 1, dtype=x.dtype)
  steps = jnp.concatenate([steps, jnp.zeros((1,), x.dtype)])
  moves = steps[:, None] * direction[None, :]
  values = jax.vmap(lambda s: decrease(x, s))(moves)
  values = jnp.where(jnp.isnan(values), jnp.inf, values).at[-1].set(0.0)
  return x + moves[jnp.argmin(values)]


def cagrad_weights(gram: jax.Array, c: float) -> Tuple[jax.Array, jax.Array]:
  """The CAGrad dual, exactly: min_{w in simplex} g_w^T g_0 + c ||g_0|| ||g_w||.

  Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021, Eq. (4) (g_w = sum_t w_t g_t, g_0 the mean gradient,
  sqrt(phi) = c ||g_0||; their code minimises it with scipy's SLSQP).

  With a = G 1 / T and k = c ||g_0||, f(w) = a.w + k sqrt(w^T G w) is convex
  and depends on w only through g_w, so some minimiser has affinely
  independent gradients on its support S; where g_w != 0 it is stationary
  on the affine hull of its face: t G_SS w_S + a_S = mu 1, sum w_S = 1 with
  t = k / ||g_w||. Its solution is w = w0 + w1 / t, where w0 and w1 solve
  the face's bordered systems with right-hand sides (0, 1) and (-a, 0)
  (`_face_solve`); since G w0 is constant on S, w0^T G w1 = 0, and
  ||g_w|| = k / t gives 1 / t^2 = w0^T G w0 / (k^2 - w1^T G w1). Every
  face's point (and its w0, the candidate for g_w = 0, where f = 0) is
  projected onto the simplex and the best one is returned: the minimiser up
  to floating-point rounding, for T <= `MAX_ENUMERATED_TASKS` (tests: the
  objective within 1e-6 (float64) / 1e-4 (float32) of scipy's tight
  optimum, relative to |a|_max + k ||g||_max, gradient norm ratios up to
  1e4, T = 2..8).

  Args:
    gram: float[T, T].
    c: CAGrad's c >= 0.
  Returns:
    (w, lam): w float[T] on the simplex, and lam = c ||g_0|| / ||g_w||, the
    weight of g_w in the direction d = g_0 + lam g_w (0 when c = 0).
  """
  num = gram.shape[0]
  g = normalize_gram(gram)
  a = g @ jnp.full((num,), 1.0 / num, g.dtype)  # <g_t, g_0>
  g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(a), 0.0))
  k = c * g0_norm
  if num == 1:
    w = jnp.ones((1,), g.dtype)
  else:
    _check_enumerable(num, "CAGrad's solver")
    rhs = jnp.stack([jnp.zeros((num,), g.dtype), -a])
    x = _face_solve(g, faces(num), rhs, jnp.array([1.0, 0.0], g.dtype))
    w0, w1 = x[:, 0], x[:, 1]
    q0 = jnp.einsum("fi,ij,fj->f", w0, g, w0)
    q1 = jnp.einsum("fi,ij,fj->f", w1, g, w1)
    denom = k * k - q1
    inv_t = jnp.sqrt(jnp.maximum(q0, 0.0) / jnp.where(denom > 0, denom, 1.0))
    stationary = w0 + inv_t[:, None] * w1
    ok = denom > 0
    candidates, valid = _to_simplex(jnp.concatenate([stationary, w0]))
    valid &= jnp.concatenate([ok, jnp.ones_like(ok)])
    w = _best_candidate(
        candidates, valid,
        lambda w: a @ w + k * jnp.sqrt(jnp.maximum(w @ g @ w, 0.0)))
  gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = k / (gw_norm + 1e-8)
  return w, lam


def nash_weights(gram: jax.Array, max_iter: int = 100,
                 ridge: float = 1e-6) -> jax.Array:
  """The Nash bargaining solution: alpha > 0 with (G alpha)_t = 1 / alpha_t.

  Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Eq.
  (3)-(4). The solution is the unique minimiser of the strictly convex
  F(alpha) = 0.5 alpha^T G alpha - sum_t log alpha_t (its gradient is
  G alpha - 1/alpha), found here by damped Newton steps (each with a
  vectorised backtracking line search that keeps alpha > 0) instead of
  their sequence of cvxpy problems, until the residual
  max_t |beta_t (C beta)_t - 1| is below `NASH_TOL` for the dtype (100 eps),
  or no step decreases F any more, or `max_iter` steps. Newton converges
  quadratically; the tests check residual <= 1e-4 (float32) / 1e-9
  (float64) on gradients of norm ratios up to 1e4 and cosines up to 0.999,
  T = 2..8.

  Conditioning: their code solves for G / ||G||_F; here for the correlation
  matrix C = D^-1/2 G D^-1/2 (D = diag G), which is exact, since the solution
  is equivariant under rescaling a task's gradient (g_t -> s_t g_t gives
  alpha_t -> alpha_t / s_t): alpha_t = beta_t / sqrt(G_tt) where
  beta_t (C beta)_t = 1. The result solves the unnormalised equation, which
  is what the constraints of their problem (alpha_t (G alpha)_t >= 1, G
  unnormalised) enforce.

  A small ridge (`ridge` * I on C) keeps the problem bounded when the
  gradients are linearly dependent (the paper assumes independence). A task
  with a zero gradient has no solution; it is left out of the bargaining and
  gets the mean alpha of the others (1 when all gradients are zero).

  Args:
    gram: float[T, T].
    max_iter: the most Newton iterations (the loop usually stops earlier).
    ridge: added to the diagonal of C.
  Returns:
    alpha float[T] > 0.
  """
  num = gram.shape[0]
  diag = jnp.diag(gram)
  nonzero = diag > ZERO_NORM_SQ * jnp.maximum(jnp.max(diag), 0.0)
  nonzero &= diag > 0
  inv_d = jnp.where(nonzero, 1.0 / jnp.sqrt(jnp.where(nonzero, diag, 1.0)), 0.0)
  c = gram * inv_d[:, None] * inv_d[None, :]
  c = jnp.where(nonzero[:, None] & nonzero[None, :], c, 0.0)
  c = c + jnp.diag(jnp.where(nonzero, ridge, 1.0))

  def decrease(beta, s):  # F(beta + s) - F(beta); +inf unless beta + s > 0
    ratio = s / beta
    ok = jnp.all(ratio > -1.0)
    value = 0.5 * s @ c @ (2.0 * beta + s) - jnp.sum(
        jnp.log1p(jnp.where(ok, ratio, 0.0)))
    return jnp.where(ok, value, jnp.inf)

  tol = 100.0 * jnp.finfo(gram.dtype).eps

  def residual(beta):
    return jnp.max(jnp.abs(beta * (c @ beta) - 1.0))

  def cond(carry):
    it, beta, moved = carry
    return (it < max_iter) & moved & (residual(beta) > tol)

  def body(carry):
    it, beta, _ = carry
    grad = c @ beta - 1.0 / beta
    hess = c + jnp.diag(1.0 / beta**2)
    step = -jnp.linalg.solve(hess, grad)
    new = _best_step(decrease, beta, step, 1.0, 30)
    return it + 1, new, jnp.any(new != beta)

  ones = jnp.ones((num,), gram.dtype)
  beta = ones * jnp.sqrt(num / jnp.sum(c))  # the best multiple of ones
  _, beta, _ = lax.while_loop(cond, body, (jnp.int32(0), beta, jnp.bool_(True)))
  alpha = beta * inv_d
  count = jnp.sum(nonzero)
  fill = jnp.where(count > 0, jnp.sum(alpha) / jnp.maximum(count, 1), 1.0)
  return jnp.where(nonzero, alpha, fill)


def dual_cone_projection_weights(gram: jax.Array, u: jax.Array) -> jax.Array:
  """v = argmin_{v >= u} v^T G v, exactly: J^T v projects J^T u onto the
  dual cone {x : <g_t, x> >= 0 for every t} (Quinton & Rey, "Jacobian
  Descent for Multi-Objective Optimization", 2024, Proposition 1).

  An exact active-set enumeration (T <= `MAX_ENUMERATED_TASKS`): for every
  set F of free coordinates, v_F solves G_FF v_F = -G_{F,~F} u_~F and
  v_~F = u_~F; each candidate is raised to v >= u and the feasible point of
  least v^T G v is returned. For a positive definite G the minimiser is one
  of the candidates (up to rounding; tests: the objective within 1e-6
  relative of scipy's, T = 2..8, norm ratios up to 1e4).

  Args:
    gram: float[T, T], positive definite.
    u: float[T].
  Returns:
    v float[T] >= u.
  """
  num = gram.shape[0]
  _check_enumerable(num, "UPGrad's projection")
  free = jnp.asarray(faces(num), gram.dtype)  # [F, T]
  d = _jacobi_scale(gram)
  corr = gram / (d[:, None] * d[None, :])
  fixed = 1.0 - free
  eye = jnp.eye(num, dtype=gram.dtype)
  # Scaled unknowns y = d v on the free set; fixed rows are the identity.
  mat = free[:, :, None] * free[:, None, :] * corr + fixed[:, :, None] * eye
  rhs = -free * jnp.einsum("ij,fj->fi", corr, fixed * (d * u)) + fixed * (d * u)
  y = jnp.linalg.solve(mat, rhs[..., None])[..., 0]
  v = y / d
  v = jnp.concatenate([v, u[None]])  # v = u: no free coordinate
  v = jnp.maximum(jnp.where(jnp.isfinite(v), v, u), u)
  values = jnp.einsum("fi,ij,fj->f", v, gram, v)
  return v[jnp.argmin(values)]


def fair_weights(gram: jax.Array, alpha: float, max_iter: int = 100,
                 ridge: float = 1e-6) -> jax.Array:
  """The alpha-fair allocation: w > 0 with (G w)_t = w_t^(-1/alpha).

  Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
  Eq. (9) (their code solves it with scipy's least_squares). With p =
  1/alpha it is the stationary point of the strictly convex
  F(w) = 0.5 w^T G w - sum_t h(w_t), h' (w) = w^-p (h = log for alpha = 1,
  Nash-MTL's equation), found by damped Newton steps with a vectorised
  backtracking line search that keeps w > 0, until the relative residual
  max_t |w_t^p (G w)_t - 1| is below 100 eps, or no step decreases F, or
  `max_iter` steps (tests: residual <= 1e-4 in float32 at norm ratios up to
  1e2, T = 2..8). Solved for G / mean diag G (then w is rescaled by
  (mean diag)^(-1/(1+p)), exact); `ridge` * I is added to that G so that
  linearly dependent gradients keep F bounded.

  Args:
    gram: float[T, T].
    alpha: FairGrad's alpha > 0.
    max_iter: the most Newton iterations.
    ridge: added to the normalised G's diagonal.
  Returns:
    w float[T] > 0.
  """
  num = gram.shape[0]
  p = 1.0 / alpha
  scale = jnp.mean(jnp.diag(gram))
  scale = jnp.where(scale > 0, scale, 1.0)
  g = gram / scale + ridge * jnp.eye(num, dtype=gram.dtype)
  tol = 100.0 * jnp.finfo(gram.dtype).eps

  def utility_gain(w, s):  # sum_t h(w_t + s_t) - h(w_t), stably
    ratio = s / w
    if p == 1.0:
      return jnp.sum(jnp.log1p(ratio))
    return jnp.sum(w ** (1.0 - p) * jnp.expm1((1.0 - p) * jnp.log1p(ratio))
                   / (1.0 - p))

  def decrease(w, s):  # F(w + s) - F(w); +inf unless w + s > 0
    ok = jnp.all(s / w > -1.0)
    value = 0.5 * s @ g @ (2.0 * w + s) - utility_gain(w, jnp.where(ok, s, 0.0))
    return jnp.where(ok, value, jnp.inf)

  def residual(w):
    return jnp.max(jnp.abs(w ** p * (g @ w) - 1.0))

  def cond(carry):
    it, w, moved = carry
    return (it < max_iter) & moved & (residual(w) > tol)

  def body(carry):
    it, w, _ = carry
    grad = g @ w - w ** -p
    hess = g + jnp.diag(p * w ** (-p - 1.0))
    new = _best_step(decrease, w, -jnp.linalg.solve(hess, grad), 1.0, 30)
    return it + 1, new, jnp.any(new != w)

  # The best multiple of ones: c^(1+p) 1^T G 1 = T.
  start = jnp.ones((num,), gram.dtype) * (num / jnp.sum(g)) ** (1.0 / (1.0 + p))
  _, w, _ = lax.while_loop(cond, body, (jnp.int32(0), start, jnp.bool_(True)))
  return w * scale ** (-1.0 / (1.0 + p))
