"""`models.embedding.gather_concat`: the native one-pass gather
(mtkd_jax/accel/native/embedding_gather.cc) against XLA's take + concatenate, in
values, gradients, under vmap, and inside the models' train step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import config_defaults
from mtkd_jax import models
from mtkd_jax.accel import native
from mtkd_jax.accel import switch as accel_switch
from mtkd_jax.data import specs
from mtkd_jax.models import embedding
from mtkd_jax.train import parallel
from mtkd_jax.train import state as state_lib
from mtkd_jax.train import step as step_lib

ROWS, D_EMB = 101, 8


def make_inputs(seed=0, batch=37, fields=5, dense_width=3):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(ROWS, D_EMB)).astype(np.float32)
  ids = rng.integers(0, ROWS, (batch, fields)).astype(np.int32)
  ids[0, 0], ids[1, 2], ids[2, 4] = -3, ROWS, ROWS + 50  # clamped, as "clip"
  ids[3] = ids[4]  # repeated rows: their gradients add up
  dense = rng.normal(size=(batch, dense_width)).astype(np.float32)
  pert = rng.normal(size=(batch, fields, D_EMB)).astype(np.float32)
  return jnp.asarray(table), jnp.asarray(ids), jnp.asarray(dense), jnp.asarray(pert)


def xla_gather_concat(table, ids, dense, pert=None):
  """`embedding.gather_concat` traced with the native kernels off."""
  with native.off():
    return embedding.gather_concat(table, ids, dense, pert)


@pytest.fixture(autouse=True)
def _kernel_built():
  assert native.use("gather_concat")  # CI has a C++ compiler


@pytest.mark.parametrize("dense_width", [0, 3])
@pytest.mark.parametrize("with_pert", [False, True])
def test_native_gather_concat_is_xla_bit_for_bit(dense_width, with_pert):
  table, ids, dense, pert = make_inputs(dense_width=dense_width)
  pert = pert if with_pert else None
  got = jax.jit(native.gather_concat_vjp)(table, ids, dense, pert)
  want = jax.jit(xla_gather_concat)(table, ids, dense, pert)
  assert got.shape == (37, 5 * D_EMB + dense_width)
  np.testing.assert_array_equal(got, want)
  # and by hand: row 0's first field is table row 0 (id -3 clamped)
  expect = np.asarray(table)[0] + (np.asarray(pert)[0, 0] if with_pert else 0)
  np.testing.assert_array_equal(got[0, :D_EMB], expect)
  np.testing.assert_array_equal(  # id ROWS clamped to the last row
      got[1, 2 * D_EMB:3 * D_EMB],
      np.asarray(table)[ROWS - 1] + (np.asarray(pert)[1, 2] if with_pert else 0))
  np.testing.assert_array_equal(got[:, 5 * D_EMB:], dense)


@pytest.mark.parametrize("with_pert", [False, True])
def test_native_gather_concat_gradients_are_takes(with_pert):
  table, ids, dense, pert = make_inputs(seed=1)
  weight = jax.random.normal(jax.random.key(0), (37, 5 * D_EMB + 3))

  def loss(use_native, table, dense, pert):
    fn = native.gather_concat_vjp if use_native else xla_gather_concat
    out = fn(table, ids, dense, pert if with_pert else None)
    return jnp.sum(out * weight)

  argnums = (0, 1, 2) if with_pert else (0, 1)
  got = jax.jit(jax.grad(functools.partial(loss, True), argnums))(table, dense, pert)
  want = jax.jit(jax.grad(functools.partial(loss, False), argnums))(table, dense, pert)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
  # the repeated example 3 = 4 puts twice its cotangent on its rows
  assert np.abs(np.asarray(got[0])).sum() > 0


def test_native_gather_concat_under_vmap():
  tables = jnp.stack([make_inputs(seed=s)[0] for s in range(3)])
  _, ids, dense, _ = make_inputs()
  got = jax.jit(jax.vmap(lambda t: embedding.gather_concat(t, ids, dense)))(tables)
  for s in range(3):
    np.testing.assert_array_equal(
        got[s], xla_gather_concat(tables[s], ids, dense))


SPEC = specs.DatasetSpec(  # no multi-hot field: the dense features fuse in
    name="toy",
    sparse=(specs.SparseField("a", 50, 4), specs.SparseField("b", 30, 4),
            specs.SparseField("c", 20, 8)),
    dense=(specs.DenseField("x"), specs.DenseField("y")),
    tasks=(specs.TaskSpec("ctr", "binary", "bce", 1.0),
           specs.TaskSpec("cvr", "binary", "bce", 1.0)))


def make_batch(seed, n=64):
  rng = np.random.default_rng(seed)
  return {"sparse": np.stack([rng.integers(0, v, n) for v in (50, 30, 20)],
                             1).astype(np.int32),
          "dense": rng.normal(size=(n, 2)).astype(np.float32),
          "labels/ctr": rng.integers(0, 2, n).astype(np.float32),
          "labels/cvr": rng.integers(0, 2, n).astype(np.float32),
          "weights": np.ones(n, np.float32)}


def train(model_name, grads, steps=3, accel="auto"):
  cfg = config_defaults.default_config()
  cfg.train.accel = accel
  cfg.model.name, cfg.model.num_experts = model_name, 2
  cfg.model.expert_hidden, cfg.model.tower_hidden = (8,), (4,)
  cfg.optimizer.learning_rate = 0.05
  cfg.train.embedding_grads = grads
  model = models.build_model(SPEC, cfg.model)
  tx = accel_switch.make_optimizer(cfg, 10)
  state = state_lib.create_train_state(model, tx, make_batch(0), seed=0)
  step_cfg = step_lib.make_step_config(cfg, model, tx, SPEC, state.params,
                                       make_batch(0))
  state = state.replace(weighting_state=step_lib.init_weighting(
      step_cfg, state.params))
  mesh = parallel.make_mesh(1)
  fn = parallel.compile_step(functools.partial(step_lib.train_step, cfg=step_cfg),
                             "jit", mesh, out_batched=False, donate_state=False)
  batch = parallel.shard_batch(make_batch(1), "jit", mesh)
  hlo = fn.lower(state, batch).as_text()
  losses = []
  for s in range(steps):
    state, metrics = fn(state, parallel.shard_batch(make_batch(s + 1), "jit", mesh))
    losses.append(float(metrics["loss"]))
  outputs = jax.jit(functools.partial(step_lib.eval_step, model=model,
                                      accel_on=step_cfg.accel))(
      state.params, make_batch(9))
  return jax.device_get(state.params), losses, jax.device_get(outputs), hlo


def test_mmoe_trains_the_same_with_the_native_gather():
  """Row gradients (through the gather's perturbation, the dense features
  joined in) give the XLA form's training run and eval outputs
  (train.accel="off": plain optax and XLA). (Dense table gradients through
  its scatter-add: tests/accel/test_row_grads.py's dense references, which
  the row path must equal.)"""
  params, losses, outputs, hlo = train("mmoe", "rows")
  assert native.GATHER_CONCAT in hlo  # the native path was taken
  ref_params, ref_losses, ref_outputs, ref_hlo = train("mmoe", "rows",
                                                       accel="off")
  assert native.GATHER_CONCAT not in ref_hlo
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               params, ref_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               outputs, ref_outputs)


def test_native_kernel_selection(monkeypatch):
  """MTKD_JAX_NATIVE is 0 or 1; `off()` switches all off while tracing
  (train.accel="off", exports); unknown kernel names list the known ones."""
  with native.off():
    assert not native.use("dense_adam") and not native.use("gather_concat")
    table, ids, dense, _ = make_inputs()
    assert native.GATHER_CONCAT not in jax.jit(embedding.gather_concat).lower(
        table, ids, dense).as_text()
  assert native.use("gather_concat")
  monkeypatch.setenv("MTKD_JAX_NATIVE", "dense_adam")
  with pytest.raises(ValueError, match="must be 0 or 1"):
    native.use("dense_adam")
  with pytest.raises(ValueError, match="known: dense_adam, gather_concat, adam"):
    native.use("gather")
