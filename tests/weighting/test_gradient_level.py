"""Gradient-level methods: coefficients from the Gram matrix, checked on the
explicit gradients g float[T, P] (gram = g g^T) against the papers' procedures
applied to g itself."""

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import weighting
from mtkd_jax.weighting import base
from mtkd_jax.weighting import gradient_level as gl


def _update(name, names, g, losses=None, state=None, rng=0, flat=False,
            **overrides):
  """One update of method `name` on gradients g; returns (comb, state, diag)."""
  method = weighting.get_method(name, **overrides)
  if state is None:
    kwargs = {"num_shared_params": g.shape[1]} if method.needs_full_grads else {}
    state = method.init(names, **kwargs)
  g = jnp.asarray(g, jnp.float32)
  grads = base.TaskGrads(g @ g.T, g if flat else None)
  losses = jnp.ones(len(names)) if losses is None else jnp.asarray(losses, jnp.float32)
  update = jax.jit(method.update)
  return update(losses, grads, state, step=jnp.int32(0),
                rng=jax.random.PRNGKey(rng))


def _pcgrad_reference(g, orders):
  """Yu et al.'s Algorithm 1 on the vectors, with the given task orders."""
  out = g.copy()
  for i in range(g.shape[0]):
    for j in orders[i]:
      dot = out[i] @ g[j]
      if dot < 0:
        out[i] -= dot / (g[j] @ g[j]) * g[j]
  return out.sum(0)


def test_pcgrad_projects_conflicting_pair():
  g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # cos < 0
  comb, _, _ = _update("pcgrad", ("a", "b"), g)
  # g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1).
  np.testing.assert_allclose(comb.coeffs @ g, [0.5, 1.5], atol=1e-6)
  g1p, g2p = np.array([0.5, 0.5]), np.array([0.0, 1.0])
  np.testing.assert_allclose([g1p @ g[1], g2p @ g[0]], 0.0, atol=1e-7)
  # Non-conflicting gradients are left as they are.
  g = np.array([[1.0, 0.2], [0.5, 1.0]])
  comb, _, _ = _update("pcgrad", ("a", "b"), g)
  np.testing.assert_allclose(comb.coeffs, [1.0, 1.0], atol=1e-6)


def test_pcgrad_matches_reference_with_random_orders():
  g = np.random.RandomState(0).randn(4, 3)
  rng = jax.random.PRNGKey(5)
  gram = jnp.asarray(g @ g.T, jnp.float32)
  a = gl.pcgrad_coefficients(gram, rng)
  orders = np.asarray(gl._random_orders(rng, 4))  # pylint: disable=protected-access
  assert sorted(orders[2]) == [0, 1, 3]
  np.testing.assert_allclose(np.asarray(a).sum(0) @ g,
                             _pcgrad_reference(g, orders), rtol=1e-4, atol=1e-5)


def test_gradvac_zero_target_is_pcgrad():
  g = np.array([[1.0, 0.0], [-1.0, 1.0]])
  comb, state, diag = _update("gradvac", ("a", "b"), g, beta=0.0)
  pc, _, _ = _update("pcgrad", ("a", "b"), g)
  np.testing.assert_allclose(comb.coeffs, pc.coeffs, atol=1e-6)
  np.testing.assert_array_equal(state.arrays["phi_hat"], 0.0)  # beta = 0
  assert "gradvac/phi_hat/a/b" in diag


def test_gradvac_reaches_target_cosine_and_updates_ema():
  g = np.array([[1.0, 0.0], [-0.5, 1.0]])
  method = weighting.get_method("gradvac")
  state = method.init(("a", "b"))
  state = state.replace(arrays={"phi_hat": jnp.full((2, 2), 0.3)})
  a, phi_hat = gl.gradvac_coefficients(jnp.asarray(g @ g.T, jnp.float32),
                                       state.arrays["phi_hat"],
                                       jax.random.PRNGKey(0), 0.1)
  a = np.asarray(a)
  g1p = a[0] @ g
  cos = g1p @ g[1] / np.linalg.norm(g1p) / np.linalg.norm(g[1])
  np.testing.assert_allclose(cos, 0.3, atol=1e-5)  # raised to the target
  phi = g[0] @ g[1] / np.linalg.norm(g[0]) / np.linalg.norm(g[1])
  np.testing.assert_allclose(phi_hat[0, 1], 0.9 * 0.3 + 0.1 * phi, rtol=1e-5)
  # No correction when the cosine already exceeds the target.
  a, _ = gl.gradvac_coefficients(jnp.asarray(g @ g.T, jnp.float32),
                                 jnp.full((2, 2), -0.9), jax.random.PRNGKey(0), 0.1)
  np.testing.assert_allclose(a, np.eye(2), atol=1e-7)


def test_mgda_min_norm_point():
  g = np.array([[1.0, 0.0], [0.0, 2.0]])
  comb, _, diag = _update("mgda", ("a", "b"), g)
  np.testing.assert_allclose(comb.coeffs, [0.8, 0.2], rtol=1e-5)
  np.testing.assert_allclose(diag["mgda/min_norm"], np.sqrt(0.8), rtol=1e-5)
  # "l2" normalisation: the unit gradients' min-norm point is their midpoint;
  # the weights are used on the unnormalised gradients (Sener & Koltun's code).
  comb, _, _ = _update("mgda", ("a", "b"), g, normalization="l2")
  np.testing.assert_allclose(comb.coeffs, [0.5, 0.5], rtol=1e-5)
  # "loss": g_t / L_t.
  comb, _, _ = _update("mgda", ("a", "b"), g, losses=[1.0, 2.0],
                       normalization="loss")
  np.testing.assert_allclose(comb.coeffs, [0.5, 0.5], rtol=1e-5)


def test_cagrad_zero_c_is_mean_and_constraint():
  g = np.random.RandomState(1).randn(3, 5)
  comb, _, _ = _update("cagrad", ("a", "b", "c"), g, c=0.0)
  np.testing.assert_array_equal(comb.coeffs, np.full(3, 1.0 / 3, np.float32))
  comb, _, _ = _update("cagrad", ("a", "b", "c"), g, c=0.5)
  # Before the 1 / (1 + c^2) rescale, d = g0 + c ||g0|| g_w / ||g_w||: on the
  # boundary of the ball ||d - g0|| <= c ||g0|| of the paper's primal problem.
  d = np.asarray(comb.coeffs, np.float64) * 1.25 @ g
  g0 = g.mean(0)
  np.testing.assert_allclose(np.linalg.norm(d - g0), 0.5 * np.linalg.norm(g0),
                             rtol=1e-4)
  # ... and d - g0 is a convex combination of the task gradients.
  w = np.asarray(comb.coeffs, np.float64) * 1.25 - 1.0 / 3
  assert (w >= -1e-6).all()


def test_imtl_equal_projections():
  rs = np.random.RandomState(2)
  for num in (2, 3, 4):
    g = rs.randn(num, 6) * np.exp(rs.randn(num, 1))
    comb, _, _ = _update("imtl", tuple("abcd"[:num]), g)
    alpha = np.asarray(comb.coeffs, np.float64)
    np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
    d = alpha @ g
    proj = g @ d / np.linalg.norm(g, axis=1)
    np.testing.assert_allclose(proj, proj[0], rtol=1e-3)
    # LibMTL's formula on the vectors.
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    dm, um = g[0] - g[1:], u[0] - u[1:]
    ref = g[0] @ um.T @ np.linalg.inv(dm @ um.T)
    np.testing.assert_allclose(alpha, np.r_[1 - ref.sum(), ref], rtol=1e-3,
                               atol=1e-4)


def test_nash_mtl_bargaining_solution():
  rs = np.random.RandomState(3)
  g = rs.randn(3, 8) * np.array([[0.1], [1.0], [5.0]])
  comb, _, diag = _update("nash_mtl", ("a", "b", "c"), g)
  alpha = np.asarray(comb.coeffs, np.float64)
  np.testing.assert_allclose(alpha * (g @ g.T @ alpha), 1.0, atol=1e-4)
  assert diag["nash/residual"] < 1e-3
  # ||sum alpha_t g_t||^2 = T at the solution.
  np.testing.assert_allclose(np.linalg.norm(alpha @ g) ** 2, 3.0, rtol=1e-4)


def test_aligned_mtl_equalises_singular_values():
  rs = np.random.RandomState(4)
  g = rs.randn(3, 10) * np.array([[0.2], [1.0], [3.0]])
  gram = jnp.asarray(g @ g.T, jnp.float32)
  aligned_matrix = jax.jit(gl.aligned_mtl_matrix, static_argnums=1)
  b = np.asarray(aligned_matrix(gram, "min"), np.float64)
  aligned = g.T @ b  # [P, T]: the aligned task gradients as columns
  sv = np.linalg.svd(aligned, compute_uv=False)
  lam_min = np.linalg.eigvalsh(g @ g.T).min()
  np.testing.assert_allclose(sv, np.sqrt(lam_min), rtol=1e-3)
  assert np.linalg.cond(aligned) < 1.01 < np.linalg.cond(g.T)
  comb, _, _ = _update("aligned_mtl", ("a", "b", "c"), g)
  np.testing.assert_allclose(comb.coeffs, b.sum(1), rtol=1e-4)
  # Rank-deficient G (two parallel gradients): finite, rank-1 alignment.
  g2 = np.array([[1.0, 0.0], [2.0, 0.0]])
  b2 = np.asarray(aligned_matrix(jnp.asarray(g2 @ g2.T, jnp.float32), "min"))
  assert np.isfinite(b2).all()
  np.testing.assert_allclose(np.linalg.svd(g2.T @ b2, compute_uv=False),
                             [np.sqrt(5.0), 0.0], atol=1e-5)


def test_gradnorm_balances_gradient_norms():
  g = np.array([[3.0, 0.0], [0.0, 1.0]])  # task a's gradient is larger
  names = ("a", "b")
  comb, state, diag = _update("gradnorm", names, g, losses=[1.0, 1.0])
  np.testing.assert_allclose(comb.coeffs, [1.0, 1.0])  # initial w
  w = state.arrays["w"]
  assert w[0] < 1.0 < w[1]  # equalises w_t ||g_t|| (equal loss ratios)
  np.testing.assert_allclose(np.sum(w), 2.0, rtol=1e-6)
  np.testing.assert_allclose(diag["gradnorm/loss_grad"], 2.0, rtol=1e-6)  # |3-2|+|1-2|
  comb, state, _ = _update("gradnorm", names, g, losses=[1.0, 1.0], state=state)
  np.testing.assert_allclose(comb.coeffs, w)  # the pre-update w of this step
  assert state.arrays["w"][0] < w[0]
  # Equal gradient norms: the task whose loss ratio L_t / L_t(0) is higher
  # (trained slower) gets more weight.
  g = np.eye(2)
  _, state, _ = _update("gradnorm", names, g, losses=[1.0, 1.0])
  _, state, _ = _update("gradnorm", names, g, losses=[0.5, 0.9], state=state)
  w = state.arrays["w"]
  assert w[1] > w[0]
  np.testing.assert_allclose(np.sum(w), 2.0, rtol=1e-6)


def test_dbmtl_by_hand():
  rs = np.random.RandomState(5)
  g = rs.randn(2, 4)
  losses = np.array([0.5, 2.0])
  comb, state, _ = _update("dbmtl", ("a", "b"), g, losses=losses, flat=True)
  ema = (1 - 0.9) * g / (losses[:, None] + 1e-8)  # from a zero EMA, b_1 = 0.9
  norms = np.linalg.norm(ema, axis=1)
  direction = (norms.max() / norms) @ ema
  np.testing.assert_allclose(comb.direction, direction, rtol=1e-5)
  np.testing.assert_allclose(comb.coeffs, 1.0 / losses, rtol=1e-6)
  np.testing.assert_allclose(state.arrays["ema"], ema, rtol=1e-5)
  # Every rescaled term has the largest norm: ||direction|| <= T max_t ||ghat_t||.
  assert np.linalg.norm(direction) <= 2 * norms.max() + 1e-6
  # Second step: b_2 = 0.9 / 2^0.5.
  comb, state, _ = _update("dbmtl", ("a", "b"), g, losses=losses, flat=True,
                           state=state)
  b2 = 0.9 / np.sqrt(2.0)
  batch = g / losses[:, None]
  np.testing.assert_allclose(state.arrays["ema"], batch + b2 * (ema - batch),
                             rtol=1e-5)


def test_dbmtl_needs_num_shared_params():
  method = weighting.get_method("dbmtl")
  assert method.needs_full_grads and not method.supports_rep_grad
  try:
    method.init(("a", "b"))
  except ValueError as e:
    assert "num_shared_params" in str(e)
  else:
    raise AssertionError("init without num_shared_params must fail")
