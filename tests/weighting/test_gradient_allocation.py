"""UPGrad and FairGrad against their defining equations and scipy."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from mtkd_jax.weighting import gradient_allocation as ga
from mtkd_jax.weighting import solvers
from tests.weighting import test_solvers as ts


def _projection_reference(gram, u):
  """min v^T G v s.t. v >= u by SLSQP (float64, tight)."""
  res = optimize.minimize(lambda v: v @ gram @ v, u + 1.0, jac=lambda v: 2 * gram @ v,
                          bounds=[(x, None) for x in u], method="SLSQP",
                          options={"ftol": 1e-15, "maxiter": 1000})
  return res.x


def test_dual_cone_projection_is_exact():
  project = jax.jit(solvers.dual_cone_projection_weights)
  for num, ratio, seed in ts.CASES:
    g = ts._conditioned_grads(num, ratio, seed)  # pylint: disable=protected-access
    gram = g @ g.T / np.trace(g @ g.T) + 1e-4 * np.eye(num)
    u = np.eye(num)[seed % num] / num
    v = np.asarray(project(jnp.asarray(gram, jnp.float32), jnp.asarray(u, jnp.float32)),
                   np.float64)
    assert (v >= u - 1e-7).all()
    ref = _projection_reference(gram, u)
    assert v @ gram @ v - ref @ gram @ ref <= 1e-5 * (ref @ gram @ ref), (num, ratio)


def test_upgrad_by_hand_and_non_conflicting():
  # Orthogonal gradients: each already in the dual cone; weights 1/T each.
  w = ga.upgrad_weights(jnp.eye(2), reg_eps=0.0)
  np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-6)
  # g1 = (1, 0), g2 = (-1, 1); the dual cone is {x: x1 >= 0, x2 >= x1}.
  # g1 / 2 projects to (0.25, 0.25) = v1 g1 + v2 g2 with v = (0.5, 0.25);
  # g2 / 2 = (-0.5, 0.5) to (0, 0.5), v = (0.5, 0.5). Sum: (1, 0.75).
  g = np.array([[1.0, 0.0], [-1.0, 1.0]])
  w = ga.upgrad_weights(jnp.asarray(g @ g.T, jnp.float32), reg_eps=0.0)
  np.testing.assert_allclose(w, [1.0, 0.75], atol=1e-5)
  # Any T: the update conflicts with no task: <g_t, d> >= 0 for the
  # (trace-normalised, regularised) Gram matrix the projections use.
  for num, ratio, seed in ts.CASES:
    g = ts._conditioned_grads(num, ratio, seed)  # pylint: disable=protected-access
    gram = g @ g.T
    w = np.asarray(jax.jit(ga.upgrad_weights)(jnp.asarray(gram, jnp.float32)),
                   np.float64)
    assert (w >= 1.0 / num - 1e-6).all()
    reg = gram / np.trace(gram) + 1e-4 * np.eye(num)
    assert (reg @ w >= -1e-6 * np.abs(reg).max() * np.abs(w).max()).all()
  # Well-conditioned and regularisation off: exactly non-conflicting.
  g = ts._conditioned_grads(5, 1.0, 1)  # pylint: disable=protected-access
  w = np.asarray(ga.upgrad_weights(jnp.asarray(g @ g.T, jnp.float32), reg_eps=0.0))
  assert (g @ (w @ g) >= -1e-5).all()


def test_fair_weights_solve_their_equation():
  solve = jax.jit(solvers.fair_weights, static_argnums=1)
  for alpha in (0.5, 1.0, 2.0, 5.0):
    for num, ratio, seed in ts.CASES:
      if ratio > 1e2:
        continue
      g = ts._conditioned_grads(num, ratio, seed)  # pylint: disable=protected-access
      gram = g @ g.T
      w = np.asarray(solve(jnp.asarray(gram, jnp.float32), alpha), np.float64)
      assert (w > 0).all()
      scale = np.mean(np.diag(gram))
      # G w = w^(-1/alpha), up to the ridge 1e-6 on G / mean diag.
      lhs = (gram / scale + 1e-6 * np.eye(num)) @ (w * scale ** (1 / (1 + 1 / alpha)))
      rhs = (w * scale ** (1 / (1 + 1 / alpha))) ** (-1 / alpha)
      np.testing.assert_allclose(lhs / rhs, 1.0, atol=1e-4,
                                 err_msg=str((alpha, num, ratio, seed)))


def test_fairgrad_alpha_one_is_nash():
  rs = np.random.RandomState(3)
  g = rs.randn(3, 8) * np.array([[0.3], [1.0], [3.0]])
  gram = jnp.asarray(g @ g.T, jnp.float32)
  np.testing.assert_allclose(solvers.fair_weights(gram, 1.0),
                             solvers.nash_weights(gram), rtol=1e-3)
