"""Embedding tables sharded row-wise over a `model` mesh axis (train.mesh).

On the 8 fake CPU devices, a (data 4, model 2) or (data 2, model 4) mesh must
give the step of the replicated 1-D mesh: same losses, norms and params up
to float32 summation order (rtol 2e-5 over 3 steps, as in test_parallel),
while each device holds only 1/M of every table's rows and of their
optimizer state. The table here has 81 rows, so it is also padded.
"""
import dataclasses
import functools

import jax
import numpy as np
import pytest

from mtkd_jax import config_defaults
from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax import weighting
from mtkd_jax.accel import switch as accel_switch
from mtkd_jax.data import specs
from mtkd_jax.train import mesh as mesh_lib
from mtkd_jax.train import parallel
from mtkd_jax.train import state as state_lib
from mtkd_jax.train import step as step_lib
from tests.conftest import ci_subset

TABLE = ("embedding", "sparse_table_d4")


def make_spec(vocab_a=50, vocab_b=31):
  return specs.DatasetSpec(
      name="toy", sparse=(specs.SparseField("a", vocab_a, 4),
                          specs.SparseField("b", vocab_b, 4)),
      dense=(specs.DenseField("x"),),
      tasks=(specs.TaskSpec("ctr", "binary", "bce", 1.0),
             specs.TaskSpec("rating", "regression", "mse", 0.5)))


def make_batch(spec, n=64, seed=0):
  rng = np.random.default_rng(seed)
  weights = np.ones(n, np.float32)
  weights[-13:] = 0.0  # padding, unevenly spread over the data axis
  return {
      "sparse": np.stack([rng.integers(0, f.vocab_size, n)
                          for f in spec.sparse], 1).astype(np.int32),
      "dense": rng.normal(size=(n, 1)).astype(np.float32),
      "labels/ctr": rng.integers(0, 2, n).astype(np.float32),
      "labels/rating": rng.normal(size=n).astype(np.float32),
      "weights": weights,
  }


def run(mesh_spec, steps=3, optimizer="adam", embedding="dense", method="ew",
        rep=False, spec=None):
  """(params with the padding cut off, metrics per step, final device state)."""
  spec = spec or make_spec()
  cfg = config_defaults.default_config()
  cfg.model.num_experts, cfg.model.expert_hidden, cfg.model.tower_hidden = 2, (8,), (4,)
  cfg.optimizer.name, cfg.optimizer.learning_rate = optimizer, 0.1
  cfg.optimizer.embedding = embedding
  cfg.weighting.name = method
  cfg.train.mesh = mesh_spec
  mesh = parallel.make_mesh(0, mesh_spec)
  mesh_lib.check_config(cfg, mesh)
  model = models.build_model(dataclasses.replace(
      spec, table_row_multiple=mesh_lib.model_size(mesh)), cfg.model)
  tx = accel_switch.make_optimizer(cfg, 10)
  state = state_lib.create_train_state(model, tx, make_batch(spec), seed=0)
  method_fn = weighting.from_config(cfg.weighting)
  step_cfg = step_lib.StepConfig(
      model, tx, spec.tasks, spec.task_names, method_fn, rep_grad=rep,
      row_grads=accel_switch.use_row_grads(cfg, tx, method_fn, state.params))
  state = state.replace(weighting_state=step_lib.init_weighting(
      step_cfg, state.params))
  fn = parallel.compile_step(functools.partial(step_lib.train_step, cfg=step_cfg),
                             "jit", mesh, out_batched=False, donate_state=True)
  state = mesh_lib.place_state(state, mesh)
  history = []
  for s in range(steps):
    batch = parallel.shard_batch(make_batch(spec, seed=s), "jit", mesh)
    state, metrics = fn(state, batch)
    history.append(jax.device_get({**metrics, **step_lib.param_norm(
        state.params)}))  # as the loop logs
  params = jax.device_get(state.params)
  rows = sum(f.vocab_size for f in spec.sparse)
  table = params[TABLE[0]][TABLE[1]]
  np.testing.assert_array_equal(table[rows:], 0.0)  # the padding stays zero
  params[TABLE[0]][TABLE[1]] = table[:rows]
  return params, history, state


def assert_same_run(ref, got, rtol=2e-5, keys=("loss", "loss/ctr",
                                               "loss/rating", "grad_norm",
                                               "param_norm"), atol=1e-7):
  (ref_params, ref_hist, _), (params, hist, _) = ref, got
  for r, g in zip(ref_hist, hist):
    for key in keys:
      np.testing.assert_allclose(g[key], r[key], rtol=rtol, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
               ref_params, params)


@pytest.mark.parametrize("spec,sizes", [
    ("", (8, 1)), ("data:4,model:2", (4, 2)), ("model:4", (2, 4)),
    ("(data:2, model:4)", (2, 4)), ("data:8", (8, 1))])
def test_parse(spec, sizes):
  assert mesh_lib.parse(spec, 8) == sizes


@pytest.mark.parametrize("spec,match", [
    ("data:3,model:2", "needs data x model = 3 x 2 = 6 devices"),
    ("model:3", "needs data x model"),
    ("rows:2", "bad axis 'rows:2'; axes are data, model"),
    ("model=2", "bad axis"), ("model:0", "bad axis"),
    ("model:2,model:2", "bad axis")])
def test_parse_errors_say_what_is_wrong(spec, match):
  with pytest.raises(errors.ConfigError, match=match):
    mesh_lib.parse(spec, 8)


def test_make_mesh_axes():
  mesh = parallel.make_mesh(0, "data:4,model:2")
  assert mesh.axis_names == ("data", "model") and mesh.shape["model"] == 2
  assert parallel.make_mesh(0, "model:1").axis_names == ("data",)
  with pytest.raises(errors.ConfigError, match="not divisible by the 4 devices of the data axis"):
    parallel.check_batch_size(6, mesh)


@pytest.mark.parametrize("mesh_spec,embedding", ci_subset(
    [("data:4,model:2", "dense"), ("data:2,model:4", "dense"),
     ("data:4,model:2", "row_adagrad"), ("data:2,model:4", "lazy_adam")],
    keep=[("data:2,model:4", "dense"), ("data:4,model:2", "row_adagrad")]))
def test_sharded_step_equals_replicated_step(mesh_spec, embedding):
  ref = run("", embedding=embedding)
  got = run(mesh_spec, embedding=embedding)
  assert_same_run(ref, got)
  state = got[2]
  model = mesh_lib.model_size(state.params[TABLE[0]][TABLE[1]].sharding.mesh)
  # the output state keeps the rows split: params and their optimizer state
  sharded = [(jax.tree_util.keystr(p), x) for p, x in
             jax.tree_util.tree_leaves_with_path(state)
             if x.sharding.spec == jax.sharding.PartitionSpec("model")]
  assert any("params" in p for p, _ in sharded)
  assert any("opt_state" in p for p, _ in sharded)
  for _, x in sharded:
    assert x.addressable_shards[0].data.shape[0] == x.shape[0] // model


@pytest.mark.parametrize("method,rep", [("pcgrad", False), ("mgda", True),
                                        ("gradnorm", False)])
def test_gradient_methods_on_sharded_tables(method, rep):
  ref = run("", optimizer="sgd", method=method, rep=rep)
  got = run("data:4,model:2", optimizer="sgd", method=method, rep=rep)
  assert_same_run(ref, got, keys=("loss", "grad_norm", "weight/ctr",
                                  "weight/rating"))


# GradDrop draws one uniform per coordinate of the flat shared gradient, and
# a sharded table is padded to a multiple of the model axis, which shifts
# the coordinates: a different (equally valid) draw. SDMGrad's 20 heavy-ball
# steps with lr 5 carry the sharded reduction's float rounding of the Gram
# matrix into the weights (1.7e-4 relative in the parameters after 2 Adam
# steps). IMTL-G solves a linear system in the differences of the unit task
# gradients, ill-conditioned when they nearly align, and Adam (lr 0.1) turns
# a rounding difference in a near-zero gradient entry into a visible step:
# one of 324 parameters moves by 2.6e-5 (2.6e-4 of one step; a wrong update
# moves parameters by about lr), hence its absolute tolerance.
NOT_LAYOUT_INVARIANT = ("graddrop",)
SHARDED_RTOL = {"sdmgrad": 1e-3}
SHARDED_ATOL = {"imtl": 1e-4}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(weighting.METHODS) -
                                          set(mesh_lib.NEEDS_REPLICATED_TABLES) -
                                          set(NOT_LAYOUT_INVARIANT)))
def test_every_method_runs_on_sharded_tables_like_replicated(method):
  ref = run("", steps=2, method=method)
  got = run("data:4,model:2", steps=2, method=method)
  assert_same_run(ref, got, rtol=SHARDED_RTOL.get(method, 1e-4), keys=("loss",),
                  atol=SHARDED_ATOL.get(method, 1e-7))


def test_methods_that_need_replicated_tables_say_so():
  cfg = config_defaults.default_config()
  cfg.train.mesh, cfg.weighting.name = "model:2", "dbmtl"
  with pytest.raises(errors.ConfigError, match="needs replicated tables"):
    mesh_lib.check_config(cfg, parallel.make_mesh(0, cfg.train.mesh))
  cfg.weighting.name, cfg.train.parallel = "ew", "pmap"
  with pytest.raises(errors.ConfigError, match="needs train.parallel='jit'"):
    mesh_lib.check_config(cfg, parallel.make_mesh(0, cfg.train.mesh))


def test_table_larger_than_a_device_share_trains():
  """A 200k-row table (3.2 MB; 3x that with Adam's state) split over 8
  devices: each device holds 1/8 of its rows, of Adam's mu and nu, and
  never a whole copy; the model trains."""
  spec = make_spec(vocab_a=150_000, vocab_b=50_000)
  params, hist, state = run("model:8", steps=2, spec=spec)
  table = state.params[TABLE[0]][TABLE[1]]
  table_bytes = table.size * table.dtype.itemsize
  for shard in table.addressable_shards:
    assert shard.data.nbytes == table_bytes // 8
  opt_leaves = [x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
                if x.ndim == 2 and x.shape == table.shape]
  assert len(opt_leaves) == 2  # mu, nu
  for x in opt_leaves:
    assert {s.data.nbytes for s in x.addressable_shards} == {table_bytes // 8}
  assert all(np.isfinite(h["loss"]) for h in hist)
  assert hist[1]["loss"] != hist[0]["loss"]
  assert params[TABLE[0]][TABLE[1]].shape == (200_000, 4)


def test_initial_state_is_built_on_the_host_not_the_default_device():
  """create_train_state builds on the host's CPU device whatever the default
  device is (on an accelerator: so a table need not fit on one chip before
  `place_state` shards it); the values do not depend on where."""
  spec = make_spec()
  cfg = config_defaults.default_config()
  model = models.build_model(spec, cfg.model)
  tx = accel_switch.make_optimizer(cfg, 10)
  host = jax.local_devices(backend="cpu")[0]
  elsewhere = jax.devices()[5]
  assert elsewhere != host
  with jax.default_device(elsewhere):
    state = state_lib.create_train_state(model, tx, make_batch(spec), seed=0)
  assert {d for x in jax.tree.leaves(state) for d in x.devices()} == {host}
  again = state_lib.create_train_state(model, tx, make_batch(spec), seed=0)
  jax.tree.map(np.testing.assert_array_equal, state, again)
