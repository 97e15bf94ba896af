"""MoDo, SDMGrad and MoCo against their papers' updates, written again here in
numpy (with a bisection projection onto the simplex), and their limits."""

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import weighting
from mtkd_jax.weighting import base
from mtkd_jax.weighting import stochastic_moo as sm


def _np_simplex(y):
  """Euclidean projection onto the simplex: max(y - theta, 0) with theta
  found by bisection on sum(max(y - theta, 0)) = 1."""
  lo, hi = y.min() - 1.0, y.max()
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if np.maximum(y - mid, 0.0).sum() > 1.0:
      lo = mid
    else:
      hi = mid
  return np.maximum(y - 0.5 * (lo + hi), 0.0)


def _halves(g, seed):
  """Two half-batch gradients whose mean is g."""
  h = np.random.RandomState(seed).randn(*g.shape)
  return g + h, g - h


def _run(name, g_seq, losses_seq=None, **settings):
  """The coefficients (and directions) of successive updates of `name`;
  split-gram methods get the cross Gram matrix of `_halves(g, k)`."""
  method = weighting.get_method(name, **settings)
  num, size = g_seq[0].shape
  kwargs = {"num_shared_params": size} if method.needs_full_grads else {}
  state = method.init(tuple(f"t{i}" for i in range(num)), **kwargs)
  update = jax.jit(method.update)
  out = []
  for k, g in enumerate(g_seq):
    g32 = jnp.asarray(g, jnp.float32)
    losses = jnp.ones(num) if losses_seq is None else jnp.asarray(losses_seq[k],
                                                                 jnp.float32)
    cross = None
    if method.needs_split_gram:
      first, second = _halves(g, k)
      cross = jnp.asarray(first @ second.T, jnp.float32)
    grads = base.TaskGrads(g32 @ g32.T, g32 if method.needs_full_grads else None,
                           cross)
    comb, state, diag = update(losses, grads, state, step=jnp.int32(k),
                               rng=jax.random.PRNGKey(0))
    out.append((np.asarray(comb.coeffs), None if comb.direction is None
                else np.asarray(comb.direction), diag))
  return out


def _grad_seq(num, size, steps, seed):
  rs = np.random.RandomState(seed)
  scales = np.array([0.1, 1.0, 3.0, 0.5][:num])[:, None]
  return [rs.randn(num, size) * scales for _ in range(steps)]


def test_modo_follows_its_lambda_update():
  gamma, rho = 0.05, 0.1
  g_seq = _grad_seq(3, 7, 4, 0)
  got = _run("modo", g_seq, gamma=gamma, rho=rho)
  lam = np.full(3, 1 / 3)
  for k, (g, (coeffs, direction, _)) in enumerate(zip(g_seq, got)):
    first, second = _halves(g, k)  # G1^T G2 lambda: <g_i(z1), g_j(z2)>
    lam = _np_simplex(lam - gamma * (first @ (second.T @ lam) + rho * lam))
    np.testing.assert_allclose(coeffs, lam, atol=1e-5)
    assert direction is None


def test_modo_and_sdmgrad_reach_mgda_on_a_fixed_gram():
  """g1 = (1, 0), g2 = (0, 2): MGDA's min-norm weights minimise
  l1^2 + 4 l2^2 on the simplex: (0.8, 0.2)."""
  gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])
  lam = jnp.array([0.5, 0.5])
  lam = jax.lax.fori_loop(0, 500, lambda _, l: sm.modo_step(l, gram, 0.1, 0.0),
                          lam)
  np.testing.assert_allclose(lam, [0.8, 0.2], atol=1e-5)
  # SDMGrad with lambda = 0 solves the same problem (its Gram is rescaled).
  w = sm.sdmgrad_weights(jnp.array([0.5, 0.5]), gram, 0.0, 200, 0.2, 0.5)
  np.testing.assert_allclose(w, [0.8, 0.2], atol=1e-5)
  np.testing.assert_allclose(sm.sdmgrad_coefficients(w, 0.0), w)


def _sdmgrad_reference(w, g, lam, num_iter, lr, momentum, k):
  """Their Algorithm 1: the inner loop on the halves xi, xi' (`_halves`),
  the update on the whole batch zeta."""
  xi1, xi2 = _halves(g, k)
  gg = xi1 @ xi2.T
  gg = gg / (np.mean(np.sqrt(np.maximum(np.diag(gg), 0))) ** 2 + 1e-8)
  buf = None
  for _ in range(num_iter):
    grad = gg @ w + lam * gg.mean(axis=1)
    buf = grad if buf is None else momentum * buf + grad
    w = _np_simplex(w - lr * buf)
  g0 = g.mean(0)
  d = (w @ g + lam * g0) / (1 + lam)
  return w, d


def test_sdmgrad_follows_its_inner_loop_and_direction():
  g_seq = _grad_seq(3, 5, 3, 1)
  got = _run("sdmgrad", g_seq)
  cfg = weighting.settings("sdmgrad")
  w = np.full(3, 1 / 3)
  for k, (g, (coeffs, _, _)) in enumerate(zip(g_seq, got)):
    w, d = _sdmgrad_reference(w, g, cfg["lam"], cfg["num_iter"], cfg["lr"],
                              cfg["momentum"], k)
    np.testing.assert_allclose(coeffs @ g, d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(coeffs.sum(), 1.0, atol=1e-5)
  # A huge pull: the mean gradient.
  coeffs = _run("sdmgrad", g_seq[:1], lam=1e6)[0][0]
  np.testing.assert_allclose(coeffs, np.full(3, 1 / 3), atol=1e-5)


def test_moco_tracks_gradients_and_steps_lambda():
  g_seq = _grad_seq(3, 6, 4, 2)
  losses_seq = [np.array([0.7, 1.3, 0.2]) * (k + 1) for k in range(4)]
  for normalize in (True, False):
    got = _run("moco", g_seq, losses_seq, normalize_grads=normalize,
               rho=0.05)
    y, lam = np.zeros((3, 6)), np.full(3, 1 / 3)
    for k, (g, losses, (coeffs, direction, _)) in enumerate(
        zip(g_seq, losses_seq, got), start=1):
      h = g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-8) * losses[:, None] \
          if normalize else g
      # The authors' defaults: beta_k = 0.5 / k^0.5, gamma_k = 0.1 / k^0.5.
      y = y - 0.5 / k ** 0.5 * (y - h)
      lam = _np_simplex(lam - 0.1 / k ** 0.5 *
                        ((y @ y.T + 0.05 * np.eye(3)) @ lam))
      np.testing.assert_allclose(coeffs, lam, atol=1e-5)
      np.testing.assert_allclose(direction, lam @ y, rtol=1e-4, atol=1e-6)
