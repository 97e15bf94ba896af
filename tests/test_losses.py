"""Losses against hand-computed values, under jit, with check_grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mtkd_jax import losses


def test_bce_hand_computed():
  logits = jnp.array([0.0, 2.0, -3.0, 100.0, -100.0])
  labels = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
  expected = [np.log(2.0), np.log1p(np.exp(2.0)), np.log1p(np.exp(3.0)),
              np.log1p(np.exp(-100.0)), np.log1p(np.exp(-100.0))]
  got = jax.jit(losses.binary_cross_entropy)(logits, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-30)


def test_bce_soft_label_minimised_at_label():
  labels = jnp.full((5,), 0.3)
  logits = jnp.linspace(-2.0, 2.0, 5)
  grad = jax.grad(lambda z: losses.binary_cross_entropy(z, labels).sum())(logits)
  np.testing.assert_allclose(grad, jax.nn.sigmoid(logits) - 0.3, rtol=1e-6)


def test_mse_and_huber_hand_computed():
  preds = jnp.array([1.0, 2.0, -1.0])
  targets = jnp.array([1.5, 0.0, 2.0])
  np.testing.assert_allclose(jax.jit(losses.mse)(preds, targets),
                             [0.25, 4.0, 9.0])
  # |r| = .5 -> .125; |r| = 2 -> 1 * (2 - .5) = 1.5; |r| = 3 -> 2.5.
  np.testing.assert_allclose(jax.jit(losses.huber)(preds, targets),
                             [0.125, 1.5, 2.5])


@pytest.mark.parametrize("name", ["bce", "mse", "huber"])
def test_check_grads(name):
  fn = losses.get_loss(name)
  outputs = jnp.array([0.3, -1.2, 2.5, 0.7])
  labels = jnp.array([1.0, 0.0, 1.0, 0.0])
  check_grads(lambda z: fn(z, labels), (outputs,), order=2, modes=["rev"],
              atol=1e-2, rtol=1e-2)


def test_weighted_mean_ignores_padding():
  values = jnp.array([1.0, 2.0, 3.0, 1e6])
  weights = jnp.array([1.0, 1.0, 2.0, 0.0])
  np.testing.assert_allclose(losses.weighted_mean(values, weights),
                             (1 + 2 + 6) / 4.0)
  assert losses.weighted_mean(values, jnp.zeros(4)) == 0.0


def test_multitask_loss_reports_terms():
  total, terms = losses.multitask_loss({"a": 2.0, "b": 3.0}, {"a": 0.5, "b": 2.0})
  assert total == 7.0
  assert terms == {"a": 2.0, "b": 3.0}
  with pytest.raises(ValueError, match="No weight"):
    losses.multitask_loss({"a": 1.0, "c": 1.0}, {"a": 1.0})


def test_unknown_loss_lists_valid_names():
  with pytest.raises(ValueError, match="Unknown loss 'bse'; valid names: bce, huber, in_batch_softmax, mse, softmax_ce"):
    losses.get_loss("bse")


def test_softmax_ce_hand_computed():
  logits = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [100.0, -100.0, 0.0]])
  labels = jnp.array([2.0, 0.0, 0.0])  # class ids stored as floats
  lse = np.log(np.exp(1.0) + np.exp(2.0) + np.exp(3.0))
  expected = [np.log(3.0), lse - 1.0, np.log1p(np.exp(-100.0) + np.exp(-200.0))]
  got = jax.jit(losses.get_loss("softmax_ce"))(logits, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-30)
  check_grads(lambda z: losses.softmax_cross_entropy(z, labels),
              (jnp.array([[0.1, -0.3, 0.5], [1.0, 2.0, 3.0],
                          [0.2, 0.0, -0.4]]),),
              order=2, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_in_batch_softmax_hand_computed():
  s = jnp.array([[2.0, 0.0, -1.0], [1.0, 1.0, 1.0], [0.0, 3.0, -1e9]])
  labels = jnp.array([1.0, 1.0, 0.0])  # row 2 is only a negative column
  expected = [np.log(np.exp(2.0) + 1.0 + np.exp(-1.0)) - 2.0, np.log(3.0), 0.0]
  got = jax.jit(losses.get_loss("in_batch_softmax"))(s, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  check_grads(lambda z: losses.in_batch_softmax(z, jnp.ones(3)),
              (jnp.array([[0.5, -0.2, 0.1], [0.3, 0.9, -0.7],
                          [0.0, 0.4, 0.2]]),),
              order=2, modes=("rev",), atol=1e-2, rtol=1e-2)
