"""Distillation losses against hand-computed and independent numpy values."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mtkd_jax import errors
from mtkd_jax.losses import distillation as kd


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _softmax(x, axis=-1):
  x = np.asarray(x, dtype=np.float64)
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _bern_kl(p, q):
  """KL(Bern(p) || Bern(q)) written out with np.log of probabilities."""
  return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def _x64_grads(fn, *args):
  """check_grads in float64 (tight tolerances, no float32 noise)."""
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(np.asarray(a, dtype=np.float64)) for a in args)
    check_grads(jax.jit(fn), args, order=1, modes=("rev",), atol=1e-6,
                rtol=1e-6)


# ------------------------------------------------------------ soft targets


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_binary_soft_target_matches_explicit_kl(temperature):
  s = np.array([0.3, -1.2, 2.5, 0.0, -3.0])
  t = np.array([1.0, -0.5, -2.0, 0.0, 1.5])
  p, q = _sigmoid(t / temperature), _sigmoid(s / temperature)
  want = temperature ** 2 * _bern_kl(p, q)
  fn = jax.jit(kd.binary_soft_target, static_argnums=2)
  got = fn(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
           temperature)
  assert got.dtype == jnp.float32 and got.shape == (5,)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_binary_soft_target_zero_at_teacher_and_stable():
  z = jnp.array([-40.0, -1.0, 0.0, 3.0, 40.0])
  np.testing.assert_array_equal(kd.binary_soft_target(z, z, 3.0), 0.0)
  # KL(Bern(σ(50)) || Bern(σ(-50))) = log σ(50) - log σ(-50) + O(50 e^-50)
  # = 50; naive log(1 - σ(50)) in float32 would be -inf.
  got = kd.binary_soft_target(jnp.array([-50.0]), jnp.array([50.0]))
  np.testing.assert_allclose(got, [50.0], rtol=1e-6)


def test_binary_soft_target_large_temperature_gradient_limit():
  # d/ds T^2 KL = T (σ(s/T) - σ(t/T)) -> (s - t) / 4 as T -> inf.
  s = jnp.array([1.0, -2.0, 0.5, 3.0])
  t = jnp.array([-1.0, 1.0, 0.5, 2.0])
  def total(s, temperature):
    return kd.binary_soft_target(s, t, temperature).sum()
  g = jax.grad(total)(s, 100.0)
  np.testing.assert_allclose(g, (s - t) / 4, rtol=2e-3, atol=1e-5)
  # At T = 1 the gradient is σ(s) - σ(t), far from the limit.
  g1 = jax.grad(total)(s, 1.0)
  np.testing.assert_allclose(g1, _sigmoid(s) - _sigmoid(t), rtol=1e-5)
  assert not np.allclose(g1, (s - t) / 4, rtol=0.05)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_multiclass_soft_target_matches_explicit_kl(temperature):
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(4, 5)) * 2, rng.normal(size=(4, 5)) * 2
  p, q = _softmax(t / temperature), _softmax(s / temperature)
  want = temperature ** 2 * np.sum(p * np.log(p / q), axis=1)
  fn = jax.jit(kd.multiclass_soft_target, static_argnums=2)
  got = fn(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
           temperature)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_multiclass_soft_target_zero_and_shift_invariant():
  t = jnp.array([[0.5, -1.0, 2.0], [3.0, 3.0, -3.0]])
  np.testing.assert_allclose(kd.multiclass_soft_target(t, t, 2.0), 0.0,
                             atol=1e-7)
  shifted = t + jnp.array([[10.0], [-4.0]])
  np.testing.assert_allclose(kd.multiclass_soft_target(shifted, t), 0.0,
                             atol=1e-5)
  assert kd.multiclass_soft_target(t[::-1], t).min() > 0.1


def test_multiclass_soft_target_large_temperature_gradient_limit():
  # Hinton et al. 2.1: grad of T^2 KL -> ((s - mean s) - (t - mean t)) / C,
  # with an O(1/T) remainder (float64 so that T = 1e4 is exact enough).
  s = np.array([[1.0, -2.0, 0.5, 3.0]])
  t = np.array([[-1.0, 1.0, 0.5, 2.0]])
  want = ((s - s.mean()) - (t - t.mean())) / 4
  with jax.enable_x64(True):
    grad = jax.grad(lambda s, temp: kd.multiclass_soft_target(
        s, jnp.asarray(t), temp).sum())
    g_far = grad(jnp.asarray(s), 1e4)
    g_near = grad(jnp.asarray(s), 10.0)
  np.testing.assert_allclose(g_far, want, atol=1e-3)
  assert np.abs(np.asarray(g_near) - want).max() > 5e-3


def test_logit_mse_and_mix_hand_computed():
  np.testing.assert_allclose(
      jax.jit(kd.logit_mse)(jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])),
      [0.25, 9.0])
  s = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  t = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
  np.testing.assert_allclose(kd.logit_mse(s, t), [13.0 / 3, 1.0], rtol=1e-6)
  np.testing.assert_allclose(
      kd.mix_hard_soft(jnp.array([1.0, 4.0]), jnp.array([3.0, 0.0]), 0.25),
      [1.5, 3.0])


def test_registry():
  s, t = jnp.array([0.2, -1.0]), jnp.array([1.0, 0.5])
  assert kd.get_kd_loss("soft_bce") is kd.binary_soft_target
  assert kd.get_kd_loss("soft_ce") is kd.multiclass_soft_target
  for name in kd.KD_LOSSES:
    fn = kd.get_kd_loss(name)
    x = s if name != "soft_ce" else jnp.stack([s, t], axis=1)
    y = t if name != "soft_ce" else jnp.stack([t, s], axis=1)
    assert fn(x, y, temperature=2.0).shape == (2,)
  mse = kd.get_kd_loss("logit_mse")
  np.testing.assert_allclose(mse(s, t, temperature=7.0), (s - t) ** 2)
  with pytest.raises(errors.ConfigError, match="logit_mse, soft_bce, soft_ce"):
    kd.get_kd_loss("soft_kl")


# ---------------------------------------------------- ranking distillation


def test_position_weights_hand_computed():
  e = np.exp([-1.0, -2.0, -3.0])
  np.testing.assert_allclose(kd.position_weights(3, 1.0), e / e.sum(),
                             rtol=1e-6)
  e = np.exp([-0.5, -1.0])
  np.testing.assert_allclose(kd.position_weights(2, 2.0), e / e.sum(),
                             rtol=1e-6)


def _ls(x):
  return np.log(_sigmoid(x))


def test_ranking_distillation_position_weights_and_mask():
  t = np.array([[5.0, 4.0, 3.0, 2.0, 1.0],
                [0.0, 1.0, 2.0, 3.0, 4.0]])
  s = np.array([[0.5, -1.0, 2.0, 0.0, 1.0],
                [1.0, 2.0, -0.5, 0.3, 0.7]])
  mask = np.ones((2, 5), dtype=bool)
  mask[0, 0] = False          # row 0's own positive: teacher top-2 = 1, 2
  w = kd.position_weights(2, 0.5)
  want = [-(w[0] * _ls(-1.0) + w[1] * _ls(2.0)),
          -(w[0] * _ls(0.7) + w[1] * _ls(0.3))]       # items 4, 3
  fn = jax.jit(functools.partial(kd.ranking_distillation, k=2, lam=0.5))
  got = fn(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
           mask=jnp.asarray(mask))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Without the mask row 0 takes items 0 and 1 instead.
  got = kd.ranking_distillation(jnp.asarray(s), jnp.asarray(t), k=2, lam=0.5)
  np.testing.assert_allclose(got[0], -(w[0] * _ls(0.5) + w[1] * _ls(-1.0)),
                             rtol=1e-5)


def test_ranking_distillation_fewer_candidates_than_k():
  s = jnp.array([[1.0, 2.0, 3.0]])
  t = jnp.array([[3.0, 2.0, 1.0]])
  mask = jnp.array([[False, True, False]])
  w = kd.position_weights(2, 1.0)
  got = kd.ranking_distillation(s, t, k=2, lam=1.0, mask=mask)
  np.testing.assert_allclose(got, [-w[0] * _ls(2.0)], rtol=1e-6)
  got = kd.ranking_distillation(s, t, k=2, lam=1.0, mask=mask, mu=1.0)
  np.testing.assert_allclose(got, [0.0])     # rank 1 = position 1: w^b = 0


def test_ranking_distillation_hybrid_hand_computed():
  # Teacher top-3: items 0, 1, 2. Among the 5 candidates (item 4 masked
  # out, though its student score is the highest) the student ranks
  # item 0 4th, item 1 1st and item 2 2nd.
  t = jnp.array([[9.0, 8.0, 7.0, 1.0, 0.0]])
  s = jnp.array([[-1.0, 3.0, 2.0, 0.5, 10.0]])
  mask = jnp.array([[True, True, True, True, False]])
  mu, lam = 0.7, 2.0
  wa = np.exp(-np.arange(1, 4) / lam)
  wa /= wa.sum()
  rhat, r = np.array([4.0, 1.0, 2.0]), np.arange(1, 4)
  wb = np.tanh(np.maximum(mu * (rhat - r), 0.0))       # [tanh(2.1), 0, 0]
  w = wa * wb
  ls = _ls([-1.0, 3.0, 2.0])
  fn = jax.jit(functools.partial(kd.ranking_distillation, k=3, lam=lam, mu=mu))
  np.testing.assert_allclose(fn(s, t, mask=mask), [-(w * ls).sum()],
                             rtol=1e-5)
  # Unmasked, item 4 outranks everything: ranks 5, 2, 3 -> w^b > 0 for all.
  wb = np.tanh(np.maximum(mu * (np.array([5.0, 2.0, 3.0]) - r), 0.0))
  np.testing.assert_allclose(
      kd.ranking_distillation(s, t, k=3, lam=lam, mu=mu),
      [-(wa * wb * ls).sum()], rtol=1e-5)
  # renormalize divides by the row's weight sum.
  wb = np.tanh(np.maximum(mu * (rhat - r), 0.0))
  np.testing.assert_allclose(
      kd.ranking_distillation(s, t, k=3, lam=lam, mu=mu, mask=mask,
                              renormalize=True),
      [-(wa * wb * ls).sum() / (wa * wb).sum()], rtol=1e-5)


def test_ranking_distillation_gradient_skips_weights():
  # dl/ds_{pi_r} = -w_r (1 - σ(s_{pi_r})); the rank-based weights are
  # constants, other candidates get no gradient.
  t = jnp.array([[3.0, 2.0, 1.0, 0.0]])
  s = jnp.array([[0.1, 1.5, -0.4, 0.9]])
  mu, lam = 0.5, 1.0
  g = jax.grad(lambda s: kd.ranking_distillation(
      s, t, k=2, lam=lam, mu=mu).sum())(s)
  wa = kd.position_weights(2, lam)
  wb = np.tanh(np.maximum(mu * (np.array([3.0, 1.0]) - np.array([1, 2])), 0))
  want = np.zeros(4)
  want[:2] = -wa * wb * (1 - _sigmoid(np.array([0.1, 1.5])))
  np.testing.assert_allclose(g[0], want, rtol=1e-5, atol=1e-7)
  _x64_grads(lambda s: kd.ranking_distillation(s, t, k=2, lam=lam, mu=mu), s)


# ---------------------------------------------------- listwise and pairwise


def _listnet_reference(s, t, groups, valid, temperature):
  out = np.zeros(len(s))
  for g in set(groups[valid].tolist()):
    idx = [i for i in range(len(s)) if groups[i] == g and valid[i]]
    pt = _softmax(t[idx] / temperature)
    ps = _softmax(s[idx] / temperature)
    for pos, i in enumerate(idx):
      out[i] = -pt[pos] * np.log(ps[pos])
  return out


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_listwise_kd_matches_loops(temperature):
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=9) * 2, rng.normal(size=9) * 2
  groups = np.array([0, 1, 0, 2, 1, 0, 3, 1, 1])
  weights = np.array([1, 1, 1, 1, 0, 2, 1, 1, 0], dtype=np.float32)
  fn = jax.jit(functools.partial(kd.listwise_kd, temperature=temperature))
  got = fn(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
           jnp.asarray(groups), weights=jnp.asarray(weights))
  want = _listnet_reference(s, t, groups, weights > 0, temperature)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  # Group 0 = rows 0, 2, 5: the sum over it is ListNet's cross-entropy.
  pt, ps = _softmax(t[[0, 2, 5]] / temperature), _softmax(s[[0, 2, 5]] /
                                                          temperature)
  got = np.asarray(got)
  np.testing.assert_allclose(got[[0, 2, 5]].sum(), -(pt * np.log(ps)).sum(),
                             rtol=2e-5)
  np.testing.assert_allclose(got[[3, 6]], 0.0, atol=1e-7)  # alone in lists
  assert got[4] == 0.0 and got[8] == 0.0        # padding


def test_listwise_kd_padding_rows_do_not_matter():
  s = jnp.array([0.5, 1.0, -2.0, 0.3])
  t = jnp.array([1.0, 0.0, 2.0, -1.0])
  groups = jnp.array([0, 0, 0, 0])
  weights = jnp.array([1.0, 1.0, 0.0, 1.0])
  base = kd.listwise_kd(s, t, groups, weights=weights)
  moved = kd.listwise_kd(s.at[2].set(50.0), t.at[2].set(-30.0), groups,
                         weights=weights)
  np.testing.assert_allclose(base, moved, rtol=1e-6)
  full = kd.listwise_kd(s, t, groups)
  keep = np.array([0, 1, 3])
  assert not np.allclose(np.asarray(base)[keep], np.asarray(full)[keep])
  _x64_grads(lambda s, t: kd.listwise_kd(s, t, groups, weights=weights,
                                         temperature=2.0), s, t)


def _pairwise_reference(s, t, groups, valid, temperature):
  out = np.zeros(len(s))
  for i in range(len(s)):
    losses = []
    for j in range(len(s)):
      if i == j or groups[i] != groups[j] or not (valid[i] and valid[j]):
        continue
      p = _sigmoid((t[i] - t[j]) / temperature)
      q = _sigmoid(s[i] - s[j])
      losses.append(-(p * np.log(q) + (1 - p) * np.log(1 - q)))
    out[i] = np.mean(losses) if losses else 0.0
  return out


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pairwise_kd_matches_explicit_pairs(temperature):
  rng = np.random.default_rng(2)
  s, t = rng.normal(size=8), rng.normal(size=8) * 2
  groups = np.array([0, 0, 1, 0, 1, 2, 1, 0])
  weights = np.array([1, 1, 1, 0, 1, 1, 1, 1], dtype=np.float32)
  fn = jax.jit(functools.partial(kd.pairwise_kd, temperature=temperature))
  got = fn(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
           jnp.asarray(groups), weights=jnp.asarray(weights))
  want = _pairwise_reference(s, t, groups, weights > 0, temperature)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  assert got[3] == 0.0 and got[5] == 0.0      # padding; alone in group 2
  _x64_grads(lambda s: kd.pairwise_kd(s, jnp.asarray(t), jnp.asarray(groups),
                                      weights=jnp.asarray(weights)), s)


def test_pairwise_kd_hand_computed():
  # Two rows, t_0 - t_1 = log 3 -> P_01 = 3/4; s_0 - s_1 = 0 -> q = 1/2.
  got = kd.pairwise_kd(jnp.array([1.0, 1.0]), jnp.array([np.log(3.0), 0.0]),
                       jnp.array([7, 7]))
  np.testing.assert_allclose(got, [np.log(2.0)] * 2, rtol=1e-6)


# ------------------------------------------------------------------ features


def test_feature_hint_hand_computed():
  u = jnp.arange(12.0).reshape(2, 2, 3)
  v = jnp.zeros((2, 2, 3)).at[1].set(1.0)
  want = [0.5 * sum(x * x for x in range(6)),
          0.5 * sum((x - 1.0) ** 2 for x in range(6, 12))]
  np.testing.assert_allclose(jax.jit(kd.feature_hint)(u, v), want)
  np.testing.assert_allclose(kd.feature_hint(u[:, 0, 0], v[:, 0, 0]),
                             [0.0, 0.5 * 25])
  _x64_grads(kd.feature_hint, u, v + 0.3)


# ----------------------------------------------------------------- ensembles


def test_ensemble_logit_space():
  z = jnp.array([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0]])
  fn = jax.jit(kd.ensemble_logits, static_argnames="space")
  np.testing.assert_allclose(fn(z), [1.0, 2.0 / 3], rtol=1e-6)
  np.testing.assert_allclose(fn(z, weights=jnp.array([2.0, 2.0, 0.0])),
                             [2.0, -1.0], rtol=1e-6)


def test_ensemble_prob_space_binary_by_hand():
  # p = (1/2 + 3/4) / 2 = 5/8 -> log-odds log(5/3).
  z = jnp.array([[0.0], [np.log(3.0)]])
  fn = jax.jit(kd.ensemble_logits, static_argnames="space")
  np.testing.assert_allclose(fn(z, space="prob"), [np.log(5.0 / 3.0)],
                             rtol=1e-6)
  # Weights 3:1 -> p = 3/4 * 1/2 + 1/4 * 3/4 = 9/16 -> log(9/7).
  np.testing.assert_allclose(
      fn(z, space="prob", weights=jnp.array([3.0, 1.0])), [np.log(9.0 / 7.0)],
      rtol=1e-6)
  # Extreme logits stay finite: p = (1 + 0) / 2 -> log-odds 0.
  np.testing.assert_allclose(
      fn(jnp.array([[80.0], [-80.0]]), space="prob"), [0.0], atol=1e-6)
  # Differs from the logit mean (0.549...).
  assert abs(float(fn(z)[0]) - np.log(5.0 / 3.0)) > 0.03


def test_ensemble_prob_space_multiclass_by_hand():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(3, 2, 4))
  w = np.array([0.2, 0.5, 0.3])
  want = np.log(np.einsum("k,kbc->bc", w, _softmax(z)))
  got = jax.jit(kd.ensemble_logits, static_argnames="space")(
      jnp.asarray(z, jnp.float32), space="prob", weights=jnp.asarray(w * 10))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
  _x64_grads(lambda z: kd.ensemble_logits(z, space="prob"), z)
  _x64_grads(lambda z: kd.ensemble_logits(z, space="prob"), z[:, :, 0])


def test_ensemble_unknown_space():
  with pytest.raises(ValueError, match="logit, prob"):
    kd.ensemble_logits(jnp.zeros((2, 3)), space="probs")


def test_auc_weights():
  np.testing.assert_allclose(
      jax.jit(kd.auc_weights)(jnp.array([0.5, 0.7, 0.8, 0.4])),
      [0.0, 0.4, 0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(kd.auc_weights(jnp.array([0.5, 0.45, 0.3])),
                             [1 / 3] * 3, rtol=1e-6)


# ----------------------------------------------------------- mutual learning


def test_mutual_distillation_multiclass_matches_loops():
  rng = np.random.default_rng(4)
  z = rng.normal(size=(3, 2, 4)) * 2
  temperature = 2.0
  p = _softmax(z / temperature)
  want = np.zeros((3, 2))
  for k in range(3):
    for j in range(3):
      if j != k:
        want[k] += temperature ** 2 * np.sum(
            p[j] * np.log(p[j] / p[k]), axis=-1) / 2
  fn = jax.jit(kd.mutual_distillation, static_argnums=1)
  np.testing.assert_allclose(fn(jnp.asarray(z, jnp.float32), temperature),
                             want, rtol=2e-5, atol=1e-6)


def test_mutual_distillation_binary_matches_soft_target():
  z = jnp.array([[0.5, -1.0, 2.0], [1.5, 0.0, -2.0]])
  got = jax.jit(kd.mutual_distillation, static_argnums=1)(z, 2.0)
  np.testing.assert_allclose(got[0], kd.binary_soft_target(z[0], z[1], 2.0),
                             rtol=1e-6)
  np.testing.assert_allclose(got[1], kd.binary_soft_target(z[1], z[0], 2.0),
                             rtol=1e-6)
  np.testing.assert_allclose(
      got[0], 4.0 * _bern_kl(_sigmoid(z[1] / 2), _sigmoid(z[0] / 2)),
      rtol=1e-5)
  np.testing.assert_array_equal(kd.mutual_distillation(z[:1]), 0.0)


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5)])
def test_mutual_distillation_gradient_reaches_own_peer_only(shape):
  z = jax.random.normal(jax.random.PRNGKey(0), shape)
  g = jax.jit(jax.grad(lambda z: kd.mutual_distillation(z)[1].sum()))(z)
  assert np.abs(g[1]).max() > 1e-3
  np.testing.assert_array_equal(g[0], 0.0)
  np.testing.assert_array_equal(g[2], 0.0)
  # Numerical check of peer 1's gradient with the other peers fixed.
  with jax.enable_x64(True):
    z64 = jnp.asarray(np.asarray(z), dtype=jnp.float64)
    peer1 = jax.jit(lambda z1: kd.mutual_distillation(z64.at[1].set(z1))[1])
    check_grads(peer1, (z64[1],), order=1, modes=("rev",), atol=1e-6,
                rtol=1e-6)


# ---------------------------------------------------------------- CrossDistil


ORDERS = {"a": ["++", "+-", "-+", "--"], "b": ["++", "-+", "+-", "--"]}


def _crossdistil_reference(r, ya, yb, task, w, groups=None, adjacent=False):
  """Explicit pairs from the paper's written orderings (no grade formula)."""
  kinds = [("+" if a else "-") + ("+" if b else "-") for a, b in zip(ya, yb)]
  level = {k: 3 - i for i, k in enumerate(ORDERS[task])}
  share = np.zeros(len(r))
  total = norm = 0.0
  for i, j in itertools.permutations(range(len(r)), 2):
    gap = level[kinds[i]] - level[kinds[j]]
    if gap <= 0 or (adjacent and gap != 1):
      continue
    if groups is not None and groups[i] != groups[j]:
      continue
    pw = w[i] * w[j]
    if pw == 0:
      continue
    loss = -np.log(_sigmoid(r[i] - r[j]))
    total += pw * loss
    norm += pw
    share[i] += 0.5 * w[j] * loss
    share[j] += 0.5 * w[i] * loss
  if norm == 0:
    return share, 0.0
  return share * w.sum() / norm, total / norm


@pytest.mark.parametrize("task", ["a", "b"])
@pytest.mark.parametrize("adjacent", [False, True])
def test_crossdistil_matches_explicit_orderings(task, adjacent):
  rng = np.random.default_rng(5)
  n = 10
  r = rng.normal(size=n)
  ya = np.array([1, 1, 0, 0, 1, 0, 1, 0, 0, 1])
  yb = np.array([1, 0, 1, 0, 0, 1, 1, 0, 1, 0])
  w = np.array([1, 1, 1, 1, 0, 1, 2, 1, 1, 1], dtype=np.float64)
  want, mean_pair = _crossdistil_reference(r, ya, yb, task, w,
                                           adjacent=adjacent)
  fn = jax.jit(functools.partial(kd.crossdistil_augmented_ranking, task=task,
                                 adjacent_only=adjacent))
  got = fn(jnp.asarray(r, jnp.float32), jnp.asarray(ya, jnp.float32),
           jnp.asarray(yb, jnp.float32), weights=jnp.asarray(w))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  # The shared weighted mean of the shares is the mean pair loss.
  np.testing.assert_allclose(np.sum(w * got) / w.sum(), mean_pair, rtol=2e-5)
  assert got[4] == 0.0


def test_crossdistil_hand_computed_quadruplet():
  # One sample of each type, scores in the wrong order for "+-" vs "-+".
  # kinds: ++, +-, -+, --;   r = 2, 0, 1, -1.
  r = jnp.array([2.0, 0.0, 1.0, -1.0])
  ya, yb = jnp.array([1.0, 1.0, 0.0, 0.0]), jnp.array([1.0, 0.0, 1.0, 0.0])
  sp = lambda x: np.log1p(np.exp(x))
  # Task a, adjacent links ++>+-, +->-+, -+>--: sp(-2), sp(1), sp(-2).
  pairs = [sp(-2.0), sp(1.0), sp(-2.0)]
  want = np.array([pairs[0], pairs[0] + pairs[1], pairs[1] + pairs[2],
                   pairs[2]]) * 0.5 * 4 / 3
  got = kd.crossdistil_augmented_ranking(r, ya, yb, task="a",
                                         adjacent_only=True)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Task b ranks -+ above +-: that link is now right, sp(-1).
  got_b = kd.crossdistil_augmented_ranking(r, ya, yb, task="b",
                                           adjacent_only=True)
  # Task b links ++>-+, -+>+-, +->--: sp(-1), sp(-1), sp(-1).
  np.testing.assert_allclose(got_b, np.array([1, 2, 2, 1]) * sp(-1.0) * 0.5
                             * 4 / 3, rtol=1e-6)


def test_crossdistil_groups_no_pairs_and_grads():
  r = jnp.array([0.3, -0.2, 1.0, 0.4, -1.0])
  ya = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0])
  yb = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])
  groups = np.array([0, 0, 1, 1, 2])
  want, _ = _crossdistil_reference(np.asarray(r), np.asarray(ya),
                                   np.asarray(yb), "a", np.ones(5), groups)
  got = kd.crossdistil_augmented_ranking(r, ya, yb,
                                         group_ids=jnp.asarray(groups))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[4] == 0.0
  # All rows of one type: no pair, all zeros (not NaN).
  same = kd.crossdistil_augmented_ranking(r, jnp.ones(5), jnp.zeros(5))
  np.testing.assert_array_equal(same, 0.0)
  with pytest.raises(ValueError, match="a, b"):
    kd.crossdistil_augmented_ranking(r, ya, yb, task="c")
  _x64_grads(lambda r: kd.crossdistil_augmented_ranking(
      r, ya, yb, task="b", weights=jnp.array([1.0, 1.0, 0.0, 2.0, 1.0])), r)


def test_platt_calibration():
  z = jnp.array([-1.0, 0.0, 2.0])
  np.testing.assert_allclose(jax.jit(kd.platt_calibrate)(z, 2.0, -0.5),
                             [-2.5, -0.5, 3.5])
  y = jnp.array([0.0, 1.0, 1.0])
  got = kd.platt_calibration_loss(z, y, 2.0, -0.5)
  p = _sigmoid([-2.5, -0.5, 3.5])
  np.testing.assert_allclose(got, -(y * np.log(p) + (1 - y) * np.log(1 - p)),
                             rtol=1e-5)
  ga = jax.grad(lambda z, a, b: kd.platt_calibration_loss(z, y, a, b).sum(),
                argnums=(0, 1, 2))(z, 2.0, -0.5)
  np.testing.assert_array_equal(ga[0], 0.0)        # teacher scores: no grad
  np.testing.assert_allclose(ga[1], np.sum((p - y) * np.asarray(z)),
                             rtol=1e-5)
  np.testing.assert_allclose(ga[2], np.sum(p - y), rtol=1e-5)


# ----------------------------------------------------------- gradient checks


def test_check_grads_soft_targets():
  s, t = np.array([0.3, -1.2, 2.5, 0.7]), np.array([1.0, 0.2, -0.4, 0.7])
  _x64_grads(lambda s, t: kd.binary_soft_target(s, t, 2.0), s, t)
  _x64_grads(lambda s, t: kd.multiclass_soft_target(s, t, 3.0),
             s.reshape(2, 2), t.reshape(2, 2))
  _x64_grads(kd.logit_mse, s, t)
  _x64_grads(lambda s: kd.ensemble_logits(s, weights=jnp.array([1.0, 3.0])),
             s.reshape(2, 2))


def test_float64_inputs_stay_float64():
  with jax.enable_x64(True):
    s = jnp.array([0.1, 0.2], dtype=jnp.float64)
    assert kd.binary_soft_target(s, s).dtype == jnp.float64
  assert kd.binary_soft_target(jnp.array([0.1], jnp.bfloat16),
                               jnp.array([0.2], jnp.bfloat16)).dtype == \
      jnp.float32
