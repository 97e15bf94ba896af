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
  solve = jax.jit(solvers.cagrad_weights, static_argnums=1)
  for seed, c in [(0, 0.4), (1, 0.9), (2, 2.0), (3, 0.1)]:
    g = _grads(seed, num, 8)
    g[0] = -0.6 * g[1] + 0.3 * g[0]  # a conflicting pair
    gram = g @ g.T
    w, lam = solve(jnp.asarray(gram, jnp.float32), c)
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


# ----------------------------------------------------------------------------
# Exactness on well- and ill-conditioned cases (gradient norm ratios up to
# 1e4, T = 2..8, float32 and float64) against tight scipy references.

CASES = [(2, 1e4, 0), (3, 1.0, 1), (3, 1e4, 2), (4, 1e2, 3), (5, 1e4, 4),
         (6, 1.0, 5), (8, 1e4, 6), (8, 1e2, 7)]
DTYPES = [(jnp.float32, 1e-4), (jnp.float64, 1e-6)]


def _conditioned_grads(num, ratio, seed, dim=10):
  """Unit directions (two of them conflicting) scaled log-uniformly over
  [1, ratio], in a random order."""
  rs = np.random.RandomState(seed)
  g = rs.randn(num, dim)
  g[0] = -0.7 * g[1] + 0.3 * g[0]
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  return g * np.logspace(0, np.log10(ratio), num)[rs.permutation(num)][:, None]


def _simplex_minimum(objective, num, starts=4):
  """A tight float64 SLSQP minimum over the simplex, best of several starts."""
  best = None
  for s in range(starts):
    x0 = (np.ones(num) / num if s == 0
          else np.random.RandomState(s).dirichlet(np.ones(num)))
    res = optimize.minimize(
        objective, x0, bounds=[(0, 1)] * num, method="SLSQP",
        constraints={"type": "eq", "fun": lambda x: 1 - np.sum(x)},
        options={"ftol": 1e-15, "maxiter": 1000})
    if best is None or objective(res.x) < objective(best):
      best = res.x
  return best


def _run(fn, gram, dtype, *static):
  with jax.enable_x64(dtype == jnp.float64):
    out = jax.jit(fn, static_argnums=tuple(range(1, 1 + len(static))))(
        jnp.asarray(gram, dtype), *static)
    return jax.tree.map(lambda x: np.asarray(x, np.float64), out)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_min_norm_element_exact_on_ill_conditioned(dtype, tol):
  for num, ratio, seed in CASES:
    g = _conditioned_grads(num, ratio, seed)
    gram = g @ g.T / np.mean(np.sum(g * g, 1))
    w, _ = _run(solvers.min_norm_element, gram, dtype)
    assert w.min() >= 0 and abs(w.sum() - 1) < 10 * tol
    ref = _simplex_minimum(lambda x: x @ gram @ x, num)
    # Objective error relative to the largest squared norm.
    assert w @ gram @ w - ref @ gram @ ref <= tol * gram.diagonal().max(), (
        num, ratio, seed, w, ref)


def _cagrad_objective(gram, c):
  gram = gram / np.mean(np.diag(gram))
  a = gram.mean(1)
  k = c * np.sqrt(a.mean())
  scale = np.abs(a).max() + k * np.sqrt(gram.diagonal().max())
  return (lambda w: a @ w + k * np.sqrt(max(w @ gram @ w, 0.0))), scale


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_cagrad_weights_exact_on_ill_conditioned(dtype, tol):
  for (num, ratio, seed), c in zip(CASES, [0.2, 0.5, 0.9, 2.0] * 2):
    g = _conditioned_grads(num, ratio, seed)
    gram = g @ g.T
    w, _ = _run(solvers.cagrad_weights, gram, dtype, c)
    assert w.min() >= 0 and abs(w.sum() - 1) < 10 * tol
    objective, scale = _cagrad_objective(gram, c)
    ref = _simplex_minimum(objective, num)
    assert objective(w) - objective(ref) <= tol * scale, (num, ratio, seed, w, ref)


def test_cagrad_weights_norms_005_1_20():
  """Three tasks with gradient norms 0.05, 1 and 20 (c = 0.5): a fixed
  number of projected-gradient steps stopped far from this optimum."""
  rs = np.random.RandomState(7)
  for _ in range(5):
    g = rs.randn(3, 6)
    g *= (np.array([0.05, 1.0, 20.0]) / np.linalg.norm(g, axis=1))[:, None]
    gram = g @ g.T
    objective, scale = _cagrad_objective(gram, 0.5)
    ref = _simplex_minimum(objective, 3)
    w, _ = _run(solvers.cagrad_weights, gram, jnp.float32, 0.5)
    assert objective(w) - objective(ref) <= 1e-5 * scale
    np.testing.assert_allclose(w, ref, atol=1e-3)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.float64, 1e-9)])
def test_nash_weights_converge_on_ill_conditioned(dtype, tol):
  for num, ratio, seed in CASES:
    g = _conditioned_grads(num, ratio, seed)
    g[-1] = g[-1] + 30.0 * g[0] * np.linalg.norm(g[-1]) / np.linalg.norm(g[0])
    gram = g @ g.T  # the last two tasks nearly parallel (cos ~ 0.999)
    alpha = _run(solvers.nash_weights, gram, dtype, 20)
    assert (alpha > 0).all()
    # The defining equation, on the correlation matrix it is solved on.
    beta = alpha * np.sqrt(gram.diagonal())
    corr = gram / np.sqrt(np.outer(gram.diagonal(), gram.diagonal()))
    np.testing.assert_allclose(beta * ((corr + 1e-6 * np.eye(num)) @ beta), 1.0,
                               atol=tol, err_msg=str((num, ratio, seed)))


def test_imtl_g_equal_projections_on_ill_conditioned():
  from mtkd_jax.weighting import gradient_level  # pylint: disable=g-import-not-at-top
  for num, ratio, seed in CASES:
    g = _conditioned_grads(num, ratio, seed)
    alpha = _run(gradient_level.imtl_g_weights, g @ g.T, jnp.float32)
    np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
    proj = g @ (alpha @ g) / np.linalg.norm(g, axis=1)
    np.testing.assert_allclose(proj / proj.mean(), 1.0, atol=1e-4,
                               err_msg=str((num, ratio, seed)))
