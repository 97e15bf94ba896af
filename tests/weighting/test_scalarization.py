"""Loss scalarizations (GLS, STCH, IMTL-L): c_t = dS/dL_t, checked against
jax.grad of each paper's scalar objective."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import weighting

NAMES = ("a", "b", "c")


def _method(name, **settings):
  method = weighting.get_method(name, **settings)
  update = jax.jit(functools.partial(method.update, grads=None))
  return method.init(NAMES), update


def _step(update, state, losses, k=0):
  return update(jnp.asarray(losses, jnp.float32), state=state,
                step=jnp.int32(k), rng=jax.random.PRNGKey(k))


def test_gls_is_gradient_of_geometric_mean():
  state, update = _method("gls")
  losses = np.array([0.2, 1.5, 4.0])
  comb, _, _ = _step(update, state, losses)
  expected = jax.grad(lambda l: jnp.prod(l) ** (1.0 / 3))(jnp.asarray(losses))
  np.testing.assert_allclose(comb.coeffs, expected, rtol=1e-5)
  # By hand: S = (0.2 * 1.5 * 4)^(1/3) = 1.2^(1/3); c_a = S / (3 * 0.2).
  np.testing.assert_allclose(comb.coeffs[0], 1.2 ** (1 / 3) / 0.6, rtol=1e-5)


def test_stch_warmup_then_smooth_tchebycheff():
  state, update = _method("stch", warmup_steps=2, mu=0.5)
  warm = [np.array([1.0, 2.0, 4.0]), np.array([3.0, 2.0, 2.0])]
  for k, losses in enumerate(warm):  # warm-up: sum_t log L_t
    comb, state, _ = _step(update, state, losses, k)
    np.testing.assert_allclose(comb.coeffs, 1.0 / losses, rtol=1e-6)
  nadir = np.mean(warm, axis=0)  # [2, 2, 3]
  losses = np.array([1.0, 3.0, 1.5])
  comb, state, diag = _step(update, state, losses, 2)
  np.testing.assert_allclose(diag["stch/nadir/c"], 3.0)

  def scalarization(l):  # Lin et al. Eq. (7), uniform preferences
    return 0.5 * 3 * jax.nn.logsumexp(jnp.log(l / nadir) / 0.5)

  expected = jax.grad(scalarization)(jnp.asarray(losses))
  np.testing.assert_allclose(comb.coeffs, expected, rtol=1e-5)
  # The task furthest above its nadir (b: 3 / 2) gets the largest weight.
  assert np.argmax(comb.coeffs * losses) == 1
  # The nadir point stays fixed after the warm-up.
  comb2, _, _ = _step(update, state, losses, 3)
  np.testing.assert_allclose(comb2.coeffs, comb.coeffs, rtol=1e-6)


def test_imtl_l_scales_and_step():
  state, update = _method("imtl_l", lr=0.1)
  losses = np.array([0.5, 2.0, 1.0])
  comb, new_state, _ = _step(update, state, losses)
  np.testing.assert_allclose(comb.coeffs, 1.0, rtol=1e-6)  # s = 0
  # Adam's first step moves each s_t by -lr * sign(d/ds (e^s L - s)).
  grad = jax.grad(lambda s: jnp.sum(jnp.exp(s) * losses - s))(jnp.zeros(3))
  np.testing.assert_allclose(new_state.arrays["s"], -0.1 * np.sign(grad),
                             rtol=1e-4)
  # Over many steps e^s_t L_t -> 1: the scaled losses are equal.
  for k in range(300):
    comb, new_state, _ = _step(update, new_state, losses, k)
  np.testing.assert_allclose(comb.coeffs * losses, 1.0, atol=0.05)
