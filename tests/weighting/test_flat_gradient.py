"""GradDrop, ExcessMTL and per-layer GradVac against their papers'
procedures, written again here in numpy on the explicit gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import errors
from mtkd_jax import weighting
from mtkd_jax.weighting import base
from mtkd_jax.weighting import flat_gradient as fg
from mtkd_jax.weighting import gradient_level as gl


def _method(name, num, size, init_kwargs=None, **settings):
  method = weighting.get_method(name, **settings)
  state = method.init(tuple(f"t{i}" for i in range(num)),
                      num_shared_params=size, **(init_kwargs or {}))
  update = jax.jit(method.update)

  def step(state, g, k=0, rng=0):
    g = jnp.asarray(g, jnp.float32)
    return update(jnp.ones(g.shape[0]), base.TaskGrads(g @ g.T, g), state,
                  step=jnp.int32(k), rng=jax.random.PRNGKey(rng))
  return state, step


def test_graddrop_by_hand():
  # Coordinate 0: all positive (P = 1): kept. Coordinate 1: all negative
  # (P = 0): kept. Coordinate 2: +3 and -1: P = 0.5 (1 + 2/4) = 0.75, so
  # the positive one survives iff U < 0.75. Coordinate 3: +1, -1: P = 0.5.
  g = np.array([[1.0, -2.0, 3.0, 1.0], [2.0, -1.0, -1.0, -1.0]])
  rng = jax.random.PRNGKey(3)
  u = np.asarray(jax.random.uniform(rng, (4,)))
  want = np.array([3.0, -3.0, 3.0 if 0.75 > u[2] else -1.0,
                   1.0 if 0.5 > u[3] else -1.0])
  got = fg.graddrop_direction(jnp.asarray(g), rng)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # The leak passes that fraction of every gradient.
  got = fg.graddrop_direction(jnp.asarray(g), rng, leak=0.25)
  np.testing.assert_allclose(got, 0.25 * g.sum(0) + 0.75 * want, rtol=1e-6)
  # Through the registry: the direction, unit logged weights.
  state, step = _method("graddrop", 2, 4)
  comb, _, diag = step(state, g, rng=3)
  np.testing.assert_allclose(comb.direction, want, rtol=1e-6)
  assert diag["weight/t0"] == 1.0


def test_graddrop_keeps_positive_sign_with_its_purity():
  """Over many draws the sum's sign at a coordinate is positive with
  probability P (Eq. 1): here P = 0.75."""
  g = jnp.tile(jnp.array([[3.0], [-1.0]]), (1, 4000))
  d = np.asarray(fg.graddrop_direction(g, jax.random.PRNGKey(0)))
  assert set(np.unique(d)) == {3.0, -1.0}
  assert abs(np.mean(d > 0) - 0.75) < 0.03


def test_excess_mtl_follows_its_weight_updates():
  eta = 0.5
  rs = np.random.RandomState(0)
  g_seq = [rs.randn(3, 5) * np.array([[0.1], [1.0], [2.0]]) for _ in range(4)]
  state, step = _method("excess_mtl", 3, 5, step_size=eta)
  sq, w, r0 = np.zeros((3, 5)), np.ones(3), None
  for k, g in enumerate(g_seq):
    comb, state, diag = step(state, g, k)
    sq = sq + g * g
    r = np.array([g[t] @ (g[t] / np.sqrt(sq[t] + 1e-7)) for t in range(3)])
    if r0 is None:
      r0 = r  # the first update records the initial risks only
    else:
      w = w * np.exp(eta * r / r0)
      w = w / w.sum() * 3
    np.testing.assert_allclose(comb.coeffs, w, rtol=1e-5)
    np.testing.assert_allclose(diag["excess_mtl/risk/t1"], r[1] / r0[1], rtol=1e-5)
    assert comb.direction is None
  # The task whose risk stays relatively high gains weight: a gradient that
  # keeps its size has r_k / r_0 ~ 1 / sqrt(k) decay, one that shrinks falls
  # faster.
  state, step = _method("excess_mtl", 2, 3, step_size=eta)
  for k in range(6):
    comb, state, _ = step(state, [[1.0, 1.0, 1.0], [0.5 ** k] * 3], k)
  assert comb.coeffs[0] > 1.0 > comb.coeffs[1]


def _gradvac_reference(g, phi_hat, orders, beta):
  """Wang et al.'s Algorithm 1 on the vectors (one group)."""
  out = g.copy()
  phi_hat = phi_hat.copy()
  for i in range(g.shape[0]):
    for j in orders[i]:
      phi = out[i] @ g[j] / (np.linalg.norm(out[i]) * np.linalg.norm(g[j]) + 1e-8)
      target = phi_hat[i, j]
      if phi < target:
        out[i] = out[i] + np.linalg.norm(out[i]) * (
            target * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - target ** 2)) / (
                np.linalg.norm(g[j]) * np.sqrt(1 - target ** 2) + 1e-8) * g[j]
      phi_hat[i, j] = (1 - beta) * target + beta * phi
  return out.sum(0), phi_hat


def test_param_groups():
  layout = (("enc/Dense_0/bias", 2), ("enc/Dense_0/kernel", 6),
            ("enc/Dense_1/bias", 1), ("enc/Dense_1/kernel", 2),
            ("table", 10))
  assert fg.param_groups(layout, "layer") == (8, 3, 10)
  assert fg.param_groups(layout, "matrix") == (2, 6, 1, 2, 10)
  with pytest.raises(errors.ConfigError, match="valid: layer, matrix"):
    fg.param_groups(layout, "block")
  tree = {"b": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)},
          "a": jnp.zeros(4)}
  assert base.param_layout(tree) == (("a", 4), ("b/bias", 3), ("b/kernel", 6))


def test_gradvac_layers_runs_gradvac_in_every_group():
  rs = np.random.RandomState(1)
  num, sizes, beta = 3, (2, 3, 4), 0.3
  layout = (("x/bias", 2), ("y/bias", 3), ("z/kernel", 4))
  state, step = _method("gradvac_layers", num, 9, beta=beta,
                        init_kwargs={"param_layout": layout})
  assert state.group_sizes == sizes
  phi = np.zeros((3, num, num))
  orders = np.asarray(gl._random_orders(jax.random.PRNGKey(4), num))  # pylint: disable=protected-access
  for k in range(3):
    g = rs.randn(num, 9)
    comb, state, diag = step(state, g, k, rng=4)
    bounds = np.cumsum((0,) + sizes)
    want = []
    for grp in range(3):
      d, phi[grp] = _gradvac_reference(g[:, bounds[grp]:bounds[grp + 1]],
                                       phi[grp], orders, beta)
      want.append(d)
    np.testing.assert_allclose(comb.direction, np.concatenate(want),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.arrays["phi_hat"], phi, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(diag["gradvac/phi_hat/t0/t1"], phi[:, 0, 1].mean(),
                               rtol=1e-4, atol=1e-6)
  # One group: exactly whole-model gradvac.
  g = rs.randn(num, 7)
  state, step = _method("gradvac_layers", num, 7, beta=beta,
                        init_kwargs={"param_layout": (("w/kernel", 7),)})
  comb, _, _ = step(state, g, rng=4)
  a, _ = gl.gradvac_coefficients(jnp.asarray(g @ g.T, jnp.float32),
                                 jnp.zeros((num, num)), jax.random.PRNGKey(4), beta)
  np.testing.assert_allclose(comb.direction, np.asarray(a).sum(0) @ g,
                             rtol=1e-4, atol=1e-5)


def test_gradvac_layers_needs_a_layout():
  with pytest.raises(ValueError, match="param_layout"):
    weighting.get_method("gradvac_layers").init(("a", "b"),
                                                num_shared_params=3)
