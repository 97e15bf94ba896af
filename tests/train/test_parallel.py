"""Data parallelism: 1 device, 8 devices under jit/shard_map and under pmap
give the same losses and the same parameters for the same global batch.

Tolerance: the three runs differ only in float32 summation order (per-device
partial sums, then a cross-device psum), so values agree to a few ulps of
the summed magnitudes; rtol=2e-5 over 3 SGD steps leaves ~100x margin while
a wrong gradient scale (the shard_map trap: 8x) or a per-device mean over
padded rows (off by ~10% here) fails by orders of magnitude.
"""
import functools

import jax
import numpy as np
import pytest

from mtkd_jax import config_defaults
from mtkd_jax import losses
from mtkd_jax import models
from mtkd_jax import weighting
from mtkd_jax.data import specs
from mtkd_jax.train import parallel
from mtkd_jax.train import state as state_lib
from mtkd_jax.train import step as step_lib
from tests.conftest import ci_subset

SPEC = specs.DatasetSpec(
    name="toy", sparse=(specs.SparseField("a", 50, 4), specs.SparseField("b", 30, 4)),
    dense=(specs.DenseField("x"),),
    tasks=(specs.TaskSpec("ctr", "binary", "bce", 1.0),
           specs.TaskSpec("rating", "regression", "mse", 0.5)))


def make_batch(n=64, seed=0):
  rng = np.random.default_rng(seed)
  weights = np.ones(n, np.float32)
  weights[-13:] = 0.0  # padding, unevenly spread over the 8 devices
  return {
      "sparse": np.stack([rng.integers(0, 50, n), rng.integers(0, 30, n)], 1).astype(np.int32),
      "dense": rng.normal(size=(n, 1)).astype(np.float32),
      "labels/ctr": rng.integers(0, 2, n).astype(np.float32),
      "labels/rating": rng.normal(size=n).astype(np.float32),
      "weights": weights,
  }


def setup(optimizer="sgd"):
  cfg = config_defaults.default_config()
  cfg.model.num_experts, cfg.model.expert_hidden, cfg.model.tower_hidden = 2, (8,), (4,)
  cfg.optimizer.name, cfg.optimizer.learning_rate = optimizer, 0.1
  model = models.build_model(SPEC, cfg.model)
  tx = state_lib.make_optimizer(cfg.optimizer, 10)
  state = state_lib.create_train_state(model, tx, make_batch(), seed=0)
  return model, tx, state


def run(mode, num_devices, steps=3, optimizer="sgd", method="ew", rep=False):
  model, tx, state = setup(optimizer)
  cfg = step_lib.StepConfig(model, tx, SPEC.tasks, SPEC.task_names,
                            weighting.get_method(method), rep_grad=rep)
  state = state.replace(weighting_state=step_lib.init_weighting(cfg, state.params))
  mesh = parallel.make_mesh(num_devices)
  fn = parallel.compile_step(functools.partial(step_lib.train_step, cfg=cfg),
                             mode, mesh, out_batched=False, donate_state=True)
  state = parallel.replicate(state, mesh)
  history = []
  for s in range(steps):
    state, metrics = fn(state, parallel.shard_batch(make_batch(seed=s), mode, mesh))
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


def test_eight_fake_devices_exist():
  assert jax.device_count() == 8


@pytest.mark.parametrize("mode,devices", [("jit", 8), ("pmap", 8), ("pmap", 1)])
def test_same_losses_and_params_as_one_device(mode, devices):
  ref_params, ref_hist = run("jit", 1)
  params, hist = run(mode, devices)
  for ref, got in zip(ref_hist, hist):
    for key in ("loss", "loss/ctr", "loss/rating", "grad_norm", "num_examples"):
      np.testing.assert_allclose(got[key], ref[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
               ref_params, params)


def test_gradient_equals_full_batch_gradient():
  """Guards the shard_map trap: the step's gradient is the global-batch one."""
  model, tx, state = setup()
  batch = make_batch()

  def full_batch_loss(params):
    outputs, _ = model.apply({"params": params}, batch)
    w = batch["weights"]
    return (losses.weighted_mean(losses.binary_cross_entropy(outputs["ctr"], batch["labels/ctr"]), w)
            + 0.5 * losses.weighted_mean(losses.mse(outputs["rating"], batch["labels/rating"]), w))

  expected = jax.grad(full_batch_loss)(state.params)
  params, hist = run("jit", 8, steps=1)
  # One SGD step with lr 0.1: params = init - 0.1 * grad.
  got = jax.tree.map(lambda new, old: (old - new) / 0.1, params, jax.device_get(state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got, jax.device_get(expected))
  np.testing.assert_allclose(hist[0]["loss"], full_batch_loss(state.params), rtol=1e-5)


def test_batch_must_divide_devices():
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    parallel.check_batch_size(100, parallel.make_mesh())


def test_unknown_mode():
  with pytest.raises(ValueError, match="valid: jit, pmap"):
    parallel.compile_step(lambda a, b: a, "pjit", parallel.make_mesh(),
                          out_batched=False, donate_state=False)


@pytest.mark.parametrize("mode,rep,method", ci_subset(
    [(m, r, method) for method in ("pcgrad", "mgda")
     for m, r in (("jit", False), ("pmap", False), ("jit", True))],
    keep={("jit", False, "pcgrad"), ("pmap", False, "mgda"),
          ("jit", True, "mgda")}))
def test_gradient_methods_same_update_on_one_and_eight_devices(method, mode, rep):
  """Gradient surgery acts on the global per-task gradients (after psum);
  in rep mode on the global Gram matrix of representation gradients."""
  ref_params, ref_hist = run("jit", 1, method=method, rep=rep)
  params, hist = run(mode, 8, method=method, rep=rep)
  for ref, got in zip(ref_hist, hist):
    for key in ("loss", "loss/ctr", "loss/rating", "grad_norm",
                "weight/ctr", "weight/rating"):
      np.testing.assert_allclose(got[key], ref[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
               ref_params, params)


# One method of each kind (loss weights, learned loss state, surgery, min-norm
# solver, half-batch, flat gradients) in CI; every registered method with
# MTKD_RUN_SLOW=1.
CI_METHODS = ("ew", "famo", "pcgrad", "mgda", "modo", "dbmtl")


@pytest.mark.parametrize("method", ci_subset(sorted(weighting.METHODS),
                                             CI_METHODS))
def test_every_method_runs_on_eight_devices_like_one(method):
  ref_params, ref_hist = run("jit", 1, steps=2, optimizer="adam", method=method)
  params, hist = run("jit", 8, steps=2, optimizer="adam", method=method)
  for ref, got in zip(ref_hist, hist):
    assert np.isfinite(got["loss"])
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               ref_params, params)


def test_ci_methods_are_registered():
  assert set(CI_METHODS) <= set(weighting.METHODS)


def test_rep_mode_updates_every_parameter():
  """Rep-grad PCGrad (towers unweighted via a second, tower-only VJP) trains
  every parameter, shared and task-specific, with finite losses."""
  params0 = jax.device_get(setup()[2].params)
  params, hist = run("jit", 8, steps=2, method="pcgrad", rep=True)
  assert all(np.isfinite(h["loss"]) for h in hist)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), params0, params)
  assert all(jax.tree.leaves(changed))
