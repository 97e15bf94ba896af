"""Double sampling (`needs_split_gram`, MoDo / SDMGrad): the step's cross
Gram matrix is that of the mean gradients on the two halves of the global
batch (even / odd global example index); 1 and 8 devices agree
(tests/train/test_parallel.py, every method)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import errors
from mtkd_jax import config_defaults
from mtkd_jax import losses
from mtkd_jax import weighting
from mtkd_jax.accel import switch as accel_switch
from mtkd_jax.train import parallel
from mtkd_jax.train import step as step_lib
from tests.train import test_parallel as tp

GAMMA, RHO = 50.0, 0.1  # the toy gradients are small


def _modo_step(num_devices):
  model, tx, state = tp.setup()
  cfg = step_lib.StepConfig(model, tx, tp.SPEC.tasks, tp.SPEC.task_names,
                            weighting.get_method("modo", gamma=GAMMA, rho=RHO))
  state = state.replace(weighting_state=step_lib.init_weighting(cfg,
                                                                state.params))
  params0 = jax.device_get(state.params)
  mesh = parallel.make_mesh(num_devices)
  fn = parallel.compile_step(functools.partial(step_lib.train_step, cfg=cfg),
                             "jit", mesh, out_batched=False, donate_state=True)
  state, metrics = fn(parallel.replicate(state, mesh),
                      parallel.shard_batch(tp.make_batch(), "jit", mesh))
  return model, params0, jax.device_get(metrics)


def _half_grads(model, params, weights):
  """Per term (ctr, 0.5 rating): the shared parameters' gradient of the
  weighted mean loss over `weights`, flat."""
  batch = tp.make_batch()

  def term(p, t):
    outputs, _ = model.apply({"params": p}, batch)
    if t == 0:
      per = losses.binary_cross_entropy(outputs["ctr"], batch["labels/ctr"])
      return losses.weighted_mean(per, weights)
    per = losses.mse(outputs["rating"], batch["labels/rating"])
    return 0.5 * losses.weighted_mean(per, weights)

  rows = []
  for t in (0, 1):
    g = step_lib.shared_params(jax.grad(term)(params, t), model)
    rows.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]))
  return np.stack(rows).astype(np.float64)


def test_modo_lambda_uses_the_halves_cross_gram():
  model, params0, metrics = _modo_step(8)
  weights = tp.make_batch()["weights"]
  even = np.arange(weights.shape[0]) % 2 == 0
  first = _half_grads(model, params0, jnp.asarray(np.where(even, weights, 0.0)))
  second = _half_grads(model, params0, jnp.asarray(np.where(even, 0.0, weights)))
  cross = first @ second.T
  lam = np.full(2, 0.5) - GAMMA * (cross @ np.full(2, 0.5) + RHO * 0.5)
  # Two tasks: the projection onto the simplex shifts both by the same amount.
  lam = np.clip(lam - (lam.sum() - 1.0) / 2, 0.0, 1.0)
  lam /= lam.sum()
  got = np.array([metrics["weight/ctr"], metrics["weight/rating"]])
  assert 0.0 < got[0] < 1.0 and abs(got[0] - 0.5) > 1e-3, got  # a real step
  np.testing.assert_allclose(got, lam, rtol=1e-4)
  # A full-batch Gram matrix would give another lambda.
  n_first, n_second = np.sum(weights[even]), np.sum(weights[~even])
  full = (n_first * first + n_second * second) / (n_first + n_second)
  shift = GAMMA * (full @ full.T @ np.full(2, 0.5))
  lam_full = 0.5 - (shift - shift.mean())
  assert np.abs(lam_full - got).max() > 100 * np.abs(lam - got).max()


def test_split_gram_needs_dense_tables():
  cfg = config_defaults.default_config()
  cfg.weighting.name = "modo"
  cfg.train.embedding_grads = "rows"
  model, tx, state = tp.setup()
  with pytest.raises(errors.ConfigError, match="two half-batches"):
    accel_switch.use_row_grads(cfg, tx, weighting.get_method("modo"), state.params)
