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
import itertools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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


def _next_point(cur: jax.Array, grad: jax.Array) -> jax.Array:
  """One projected step of the MGDA solver (Sener & Koltun's `_next_point`).

  Moves along the simplex-tangent part of `grad` up to the first face of the
  simplex it hits (or a unit step), then projects onto the simplex.
  """
  n = cur.shape[0]
  proj = grad - jnp.sum(grad) / n
  neg, pos = proj < 0, proj > 0
  tm1 = jnp.where(neg, -cur / jnp.where(neg, proj, 1.0), jnp.inf)
  tm2 = jnp.where(pos, (1.0 - cur) / jnp.where(pos, proj, 1.0), jnp.inf)
  ok1, ok2 = neg & (tm1 > 1e-7), pos & (tm2 > 1e-7)
  t = jnp.where(jnp.any(ok1), jnp.min(jnp.where(ok1, tm1, jnp.inf)), 1.0)
  t = jnp.where(jnp.any(ok2), jnp.minimum(t, jnp.min(jnp.where(ok2, tm2, jnp.inf))), t)
  return project_to_simplex(proj * t + cur)


def min_norm_element(gram: jax.Array, max_iter: int = 250,
                     tol: float = 1e-5) -> Tuple[jax.Array, jax.Array]:
  """Min-norm point of the convex hull of the task gradients (MGDA).

  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018, Algorithm 2 as in their `MinNormSolver.find_min_norm_element`:
  start from the best pair (`min_norm_2` over all pairs, exact for T = 2), then
  alternate a projected-gradient step on the simplex (`_next_point`) with the
  exact line search of `min_norm_2` between the current and the new point,
  until the weights change by less than `tol` (L1) or `max_iter` steps.

  Args:
    gram: float[T, T], G_ij = <g_i, g_j> (any positive scale).
    max_iter: the maximum number of iterations (their MAX_ITER = 250).
    tol: the L1 change of the weights that stops the iteration (1e-5).
  Returns:
    (w, cost): w float[T] on the simplex minimising w^T G w, and that
    minimum w^T G w.
  """
  num = gram.shape[0]
  if num == 1:
    return jnp.ones((1,), gram.dtype), gram[0, 0]
  g = normalize_gram(gram)  # same minimiser
  pairs = np.array(list(itertools.combinations(range(num), 2)))
  i, j = pairs[:, 0], pairs[:, 1]
  gammas, costs = min_norm_2(g[i, i], g[i, j], g[j, j])
  best = jnp.argmin(costs)  # first of equals, as their strict `d < dmin`
  bi, bj = jnp.asarray(i)[best], jnp.asarray(j)[best]
  sol = (jnp.zeros(num, g.dtype).at[bi].set(gammas[best])
         .at[bj].set(1.0 - gammas[best]))
  if num == 2:
    return sol, sol @ gram @ sol

  def cond(carry):
    it, _, done = carry
    return (it < max_iter) & ~done

  def body(carry):
    it, sol, _ = carry
    new_point = _next_point(sol, -g @ sol)
    gamma, _ = min_norm_2(sol @ g @ sol, sol @ g @ new_point,
                          new_point @ g @ new_point)
    new_sol = gamma * sol + (1.0 - gamma) * new_point
    done = jnp.sum(jnp.abs(new_sol - sol)) < tol
    return it + 1, jnp.where(done, sol, new_sol), done

  _, sol, _ = lax.while_loop(cond, body, (jnp.int32(0), sol, jnp.bool_(False)))
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


def cagrad_weights(gram: jax.Array, c: float, num_iters: int = 100
                   ) -> Tuple[jax.Array, jax.Array]:
  """The CAGrad dual: min_{w in simplex} g_w^T g_0 + c ||g_0|| ||g_w||.

  Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021, Eq. (4) (g_w = sum_t w_t g_t, g_0 the mean gradient,
  sqrt(phi) = c ||g_0||). Their code minimises it with scipy's SLSQP; here
  projected gradient descent on the simplex, for `num_iters` steps with a
  vectorised backtracking line search (a convex problem, so it converges to
  the same minimiser). The objective is that of their code, with 1e-8 added
  under the square root (on the normalised G).

  Args:
    gram: float[T, T].
    c: CAGrad's c >= 0.
    num_iters: projected-gradient iterations.
  Returns:
    (w, lam): w float[T] on the simplex, and lam = c ||g_0|| / ||g_w||, the
    weight of g_w in the direction d = g_0 + lam g_w (0 when c = 0).
  """
  num = gram.shape[0]
  g = normalize_gram(gram)
  a = g @ jnp.full((num,), 1.0 / num, g.dtype)  # <g_t, g_0>
  g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(a), 0.0))
  k = c * g0_norm

  def norm(w):
    return jnp.sqrt(jnp.maximum(w @ g @ w, 0.0) + 1e-8)

  def decrease(w, s):  # f(w + s) - f(w), f(w) = a.w + k ||g_w||
    sq = s @ g @ (2.0 * w + s)  # ||g_{w+s}||^2 - ||g_w||^2
    return a @ s + k * sq / (norm(w + s) + norm(w))

  lam_max = jnp.maximum(jnp.trace(g), 1e-8)  # >= the largest eigenvalue

  def body(_, w):
    n = norm(w)
    grad = a + k * (g @ w) / n
    # A bound on the gradient's Lipschitz constant near w (k lam_max / n),
    # plus lam_max to keep the step finite when c = 0.
    lipschitz = lam_max * (1.0 + k / n)
    target = project_to_simplex(w - 4.0 / lipschitz * grad)
    return _best_step(decrease, w, target - w, 1.0, 12)

  w = jnp.full((num,), 1.0 / num, g.dtype)
  if num > 1:
    w = lax.fori_loop(0, num_iters, body, w)
  gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = k / (gw_norm + 1e-8)
  return w, lam


def nash_weights(gram: jax.Array, num_iters: int = 20,
                 ridge: float = 1e-6) -> jax.Array:
  """The Nash bargaining solution: alpha > 0 with (G alpha)_t = 1 / alpha_t.

  Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Eq.
  (3)-(4). The solution is the unique minimiser of the strictly convex
  F(alpha) = 0.5 alpha^T G alpha - sum_t log alpha_t (its gradient is
  G alpha - 1/alpha), found here by damped Newton steps (a fixed number, each
  with a vectorised backtracking line search that keeps alpha > 0) instead of
  their sequence of cvxpy problems. Newton converges quadratically; 5 steps
  usually reach float32 accuracy.

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
    num_iters: Newton iterations.
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

  def body(_, beta):
    grad = c @ beta - 1.0 / beta
    hess = c + jnp.diag(1.0 / beta**2)
    step = -jnp.linalg.solve(hess, grad)
    return _best_step(decrease, beta, step, 1.0, 20)

  ones = jnp.ones((num,), gram.dtype)
  beta = ones * jnp.sqrt(num / jnp.sum(c))  # the best multiple of ones
  beta = lax.fori_loop(0, num_iters, body, beta)
  alpha = beta * inv_d
  count = jnp.sum(nonzero)
  fill = jnp.where(count > 0, jnp.sum(alpha) / jnp.maximum(count, 1), 1.0)
  return jnp.where(nonzero, alpha, fill)
