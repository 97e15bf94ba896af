"""Loss-level methods (EW, uncertainty, DWA, RLW, FAMO) against their papers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import weighting

NAMES = ("ctr", "cvr")


def _method(name, **settings):
  method = weighting.get_method(name, **settings)
  state = method.init(NAMES)
  update = jax.jit(functools.partial(method.update, grads=None))
  return method, state, update


def _step(update, state, losses, k=0):
  return update(jnp.asarray(losses, jnp.float32), state=state,
                step=jnp.int32(k), rng=jax.random.PRNGKey(k))


def test_ew_is_ones_and_logs_names():
  method, state, update = _method("ew")
  assert not method.needs_grads and method.scales_specific
  comb, state, diag = _step(update, state, [0.3, 2.0])
  np.testing.assert_array_equal(comb.coeffs, [1.0, 1.0])
  assert comb.direction is None
  assert set(diag) == {"weight/ctr", "weight/cvr"}


def test_uncertainty_converges_to_inverse_noise_variance():
  """Regression toy: L_t = MSE of a fixed predictor, E[L_t] = sigma_t^2."""
  sigma2 = np.array([0.25, 4.0])
  method, state, _ = _method("uncertainty", lr=0.02)
  # Per-step MSE of 64 residuals ~ N(0, sigma_t^2).
  noise = np.random.RandomState(0).randn(1500, 64, 2)
  losses = jnp.asarray(np.mean((noise * np.sqrt(sigma2)) ** 2, axis=1),
                       jnp.float32)

  def body(state, loss):
    comb, state, _ = method.update(loss, None, state, step=0, rng=None)
    return state, comb.coeffs

  _, coeffs = jax.jit(lambda s, l: jax.lax.scan(body, s, l))(state, losses)
  final = np.asarray(coeffs[-300:]).mean(0)
  np.testing.assert_allclose(final, 1.0 / (2.0 * sigma2), rtol=0.05)
  # The first step uses the initial s = -0.5: c = 0.5 exp(0.5).
  np.testing.assert_allclose(coeffs[0], 0.5 * np.exp(0.5), rtol=1e-6)


def test_uncertainty_step_is_gradient_of_its_objective():
  method, state, update = _method("uncertainty", lr=0.1)
  comb, new_state, diag = _step(update, state, [2.0, 0.1])
  s0 = -0.5
  np.testing.assert_allclose(comb.coeffs, 0.5 * np.exp(-s0), rtol=1e-6)
  # d/ds (0.5 e^-s L + 0.5 s) = 0.5 - 0.5 e^-s L: the first Adam step moves s
  # by lr against its sign.
  grad = 0.5 - 0.5 * np.exp(-s0) * np.array([2.0, 0.1])
  np.testing.assert_allclose(new_state.arrays["log_var"] - s0,
                             -0.1 * np.sign(grad), rtol=1e-4)
  assert "uncertainty/log_var/ctr" in diag


def test_dwa_weights():
  _, state, update = _method("dwa", epoch_steps=2, temperature=2.0)
  coeffs = []
  # Epochs 0 and 1 (weights 1); both tasks halve from epoch 0 to 1.
  for k, losses in enumerate([[1.0, 2.0], [1.0, 2.0], [0.5, 1.0], [0.5, 1.0]]):
    comb, state, _ = _step(update, state, losses, k)
    coeffs.append(comb.coeffs)
  np.testing.assert_allclose(coeffs, 1.0)
  # Epoch 2: equal ratios -> equal weights 1.
  comb, state, _ = _step(update, state, [0.4, 0.5], 4)
  np.testing.assert_allclose(comb.coeffs, [1.0, 1.0], rtol=1e-6)
  comb, state, _ = _step(update, state, [0.2, 0.5], 5)  # epoch 2 averages
  # Epoch 3: r = (0.3 / 0.5, 0.5 / 1.0): the 1st task fell less.
  comb, state, _ = _step(update, state, [0.1, 0.1], 6)
  r = np.array([0.3 / 0.5, 0.5 / 1.0])
  expected = 2 * np.exp(r / 2.0) / np.exp(r / 2.0).sum()
  np.testing.assert_allclose(comb.coeffs, expected, rtol=1e-5)
  assert comb.coeffs[0] > comb.coeffs[1]  # the 1st task's loss fell less
  np.testing.assert_allclose(np.sum(comb.coeffs), 2.0, rtol=1e-6)


def test_rlw_random_simplex_weights():
  method = weighting.get_method("rlw")
  state = method.init(("a", "b", "c"))
  update = jax.jit(functools.partial(method.update, grads=None))
  losses = jnp.ones(3)
  draws = [np.asarray(update(losses, state=state, step=0,
                             rng=jax.random.PRNGKey(k))[0].coeffs)
           for k in range(3)]
  for w in draws:
    assert (w > 0).all()
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  assert not np.allclose(draws[0], draws[1])
  again = update(losses, state=state, step=0, rng=jax.random.PRNGKey(0))[0]
  np.testing.assert_array_equal(again.coeffs, draws[0])
  # softmax of N(0, I), as LibMTL.
  z = jax.random.normal(jax.random.PRNGKey(0), (3,))
  np.testing.assert_allclose(draws[0], jax.nn.softmax(z), rtol=1e-6)
  # (Dirichlet is left out: its sampler takes seconds to compile.)
  dists = ("uniform", "bernoulli", "constrained_bernoulli")
  samples = jax.jit(lambda rng: [weighting.loss_level.rlw_sample(rng, 3, d)
                                 for d in dists])(jax.random.PRNGKey(1))
  for w in samples:
    assert (w >= 0).all() and w.sum() > 0


def test_famo_favours_slower_task_and_stays_finite():
  _, state, update = _method("famo")
  comb, state, _ = _step(update, state, [1.0, 4.0])
  # First step: z uniform, c_t = (1/L_t) / sum_i (1/L_i).
  np.testing.assert_allclose(comb.coeffs, [0.8, 0.2], rtol=1e-5)
  losses = np.array([1.0, 4.0])
  for k in range(1, 40):
    losses = losses * np.array([0.9, 0.99])  # task 0 falls fast, task 1 slowly
    comb, state, diag = _step(update, state, losses, k)
    assert np.isfinite(comb.coeffs).all()
  z = np.array([diag["famo/z/ctr"], diag["famo/z/cvr"]])
  assert z[1] > z[0] + 0.1  # the slower task's logit grew
  np.testing.assert_allclose(np.sum(comb.coeffs), 1.0, rtol=1e-5)
  # Losses at l_min (zero) give finite coefficients.
  comb, _, _ = _step(update, state, [0.0, 0.0], 40)
  assert np.isfinite(comb.coeffs).all()


def test_famo_logit_gradient_matches_autodiff():
  """xi's gradient is J_softmax^T delta, as their torch.autograd.grad."""
  _, state, update = _method("famo", lr=0.1, gamma=0.0)
  _, state, _ = _step(update, state, [1.0, 2.0], 0)
  _, state, _ = _step(update, state, [0.5, 1.9], 1)
  delta = np.log(np.array([1.0, 2.0]) + 1e-8) - np.log(np.array([0.5, 1.9]) + 1e-8)
  grad = jax.grad(lambda xi: jnp.dot(jax.nn.softmax(xi), delta))(jnp.zeros(2))
  # The first Adam step is -lr * sign(grad).
  np.testing.assert_allclose(state.arrays["logits"], -0.1 * np.sign(grad),
                             rtol=1e-4)
