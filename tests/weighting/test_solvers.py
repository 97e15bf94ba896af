"""The simplex solvers against brute force, scipy and their defining equations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mtkd_jax.weighting import solvers


def _grads(seed, num, dim, scale=1.0):
  return np.random.RandomState(seed).randn(num, dim) * scale


def test_project_to_simplex_matches_qp():
  rs = np.random.RandomState(0)
  project = jax.jit(solvers.project_to_simplex)
  for y in [rs.randn(4) * 3, np.array([0.2, 0.3, 0.5]), np.array([5.0, -5.0]),
            np.array([1.0, 1.0, 1.0])]:
    got = np.asarray(project(jnp.asarray(y, jnp.float32)))
    ref = optimize.minimize(
        lambda w: np.sum((w - y) ** 2), np.ones_like(y) / len(y),
        bounds=[(0, 1)] * len(y), method="SLSQP",
        constraints={"type": "eq", "fun": lambda w: np.sum(w) - 1}).x
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert got.min() >= 0 and abs(got.sum() - 1) < 1e-6


def test_min_norm_2_closed_form():
  v1, v2 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
  gamma, cost = solvers.min_norm_2(v1 @ v1, v1 @ v2, v2 @ v2)
  # min_g ||g v1 + (1-g) v2||^2 = g^2 + 4 (1-g)^2 -> g = 0.8, cost = 0.8.
  np.testing.assert_allclose([gamma, cost], [0.8, 0.8], rtol=1e-6)
  # The segment's end is the min-norm point: v1 = (1, 0), v2 = (2, 0).
  gamma, cost = solvers.min_norm_2(1.0, 2.0, 4.0)
  np.testing.assert_allclose([gamma, cost], [1.0, 1.0])
  gamma, cost = solvers.min_norm_2(1.0, 1.0, 1.0)  # v1 = v2: no NaN
  assert np.isfinite([gamma, cost]).all()


def _brute_force_min_norm(g, step):
  """min ||w g|| over a grid of step `step` on the simplex."""
  num = g.shape[0]
  ticks = np.arange(0.0, 1.0 + 1e-9, step)
  w = np.stack(np.meshgrid(*[ticks] * (num - 1), indexing="ij"), -1)
  w = w.reshape(-1, num - 1)
  w = w[w.sum(1) <= 1 + 1e-9]
  w = np.concatenate([w, 1 - w.sum(1, keepdims=True)], 1)
  return np.linalg.norm(w @ g, axis=1).min()


@pytest.mark.parametrize("num,step", [(2, 1e-4), (3, 2.5e-3)])
def test_min_norm_element_is_brute_force_minimum(num, step):
  solve = jax.jit(solvers.min_norm_element)
  for seed in range(3):
    g = _grads(seed, num, 5)
    g[0] -= 1.5 * g[1]  # some conflict
    w, _ = solve(jnp.asarray(g @ g.T, jnp.float32))
    w = np.asarray(w, np.float64)
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-5
    ours = np.linalg.norm(w @ g)
    brute = _brute_force_min_norm(g, step)
    assert ours <= brute + 1e-4 * np.abs(g).max()
    assert ours >= brute - 0.05 * step * np.abs(g).sum()  # the grid's resolution


def test_min_norm_element_t1_and_zero():
  w, _ = solvers.min_norm_element(jnp.ones((1, 1)))
  np.testing.assert_allclose(w, [1.0])
  w, _ = jax.jit(solvers.min_norm_element)(jnp.zeros((3, 3)))
  assert np.isfinite(w).all() and abs(float(w.sum()) - 1) < 1e-6


def _cagrad_scipy(gram, c):
  """The CAGrad authors' objective and scipy solver (LibMTL's CAGrad)."""
  num = gram.shape[0]
  g0_norm = np.sqrt(gram.mean() + 1e-8)
  x0 = np.ones(num) / num
  k = c * g0_norm + 1e-8

  def objective(x):
    return x @ gram @ x0 + k * np.sqrt(x @ gram @ x + 1e-8)

  res = optimize.minimize(objective, x0, bounds=[(0, 1)] * num, method="SLSQP",
                          constraints={"type": "eq", "fun": lambda x: 1 - sum(x)},
                          options={"ftol": 1e-12, "maxiter": 500})
  w = res.x
  lam = k / (np.sqrt(w @ gram @ w) + 1e-8)
  return w, x0 + lam * w, objective


def test_cagrad_weights_match_scipy():
  num = 3
  solve = jax.jit(solvers.cagrad_weights, static_argnums=(1, 2))
  for seed, c in [(0, 0.4), (1, 0.9), (2, 2.0), (3, 0.1)]:
    g = _grads(seed, num, 8)
    g[0] = -0.6 * g[1] + 0.3 * g[0]  # a conflicting pair
    gram = g @ g.T
    w, lam = solve(jnp.asarray(gram, jnp.float32), c, 100)
    w = np.asarray(w, np.float64)
    coeffs = 1.0 / num + float(lam) * w
    w_ref, ref, objective = _cagrad_scipy(gram, c)
    assert objective(w) <= objective(w_ref) + 1e-6 * abs(objective(w_ref))
    d, d_ref = coeffs @ g, ref @ g
    np.testing.assert_allclose(d, d_ref, atol=3e-3 * np.linalg.norm(d_ref))


@pytest.mark.parametrize("num", [2, 3, 5])
def test_nash_weights_solve_bargaining_equation(num):
  solve = jax.jit(solvers.nash_weights, static_argnums=(1,))
  for seed in range(3):
    rs = np.random.RandomState(seed)
    g = rs.randn(num, 12) * np.exp(rs.randn(num, 1))  # unequal scales
    gram = g @ g.T
    alpha = np.asarray(solve(jnp.asarray(gram, jnp.float32), 20), np.float64)
    assert (alpha > 0).all()
    np.testing.assert_allclose(alpha * (gram @ alpha), 1.0, atol=1e-4)


def test_nash_weights_degenerate_inputs_are_finite():
  solve = jax.jit(solvers.nash_weights, static_argnums=(1,))
  g = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])  # zero and opposite
  for gram in [g @ g.T, np.zeros((3, 3))]:
    alpha = np.asarray(solve(jnp.asarray(gram, jnp.float32), 20))
    assert np.isfinite(alpha).all() and (alpha > 0).all()
