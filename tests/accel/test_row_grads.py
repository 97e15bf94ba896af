"""The row-gradient path (train.embedding_grads="rows") gives the dense
path's update, on 1 and 8 devices, under jit and pmap.

The toy model looks every table up at several sites: two sparse fields in
one concatenated table, a multi-hot field with -1 padding, and a behaviour
sequence that shares the first sparse field's rows (DIN: its target is a
third lookup of that table); 13 of the 64 examples are padding (weight 0).
Tolerance as tests/train/test_parallel.py: the paths differ only in float
summation order (segment sums, then one scatter, versus one scatter-add).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtkd_jax import config_defaults
from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax.data import specs
from mtkd_jax.train import loop
from mtkd_jax.train import parallel
from mtkd_jax.accel import row_grads
from mtkd_jax.accel import row_optim
from mtkd_jax.accel import switch as accel_switch
from mtkd_jax.train import state as state_lib
from mtkd_jax.train import step as step_lib
from tests.conftest import ci_subset

SPEC = specs.DatasetSpec(
    name="toy",
    sparse=(specs.SparseField("a", 50, 4), specs.SparseField("b", 30, 4)),
    multi_hot=(specs.MultiHotField("m", 20, 3, 4),),
    sequences=(specs.SequenceField("s", 50, 4, 4, shares="a"),),
    dense=(specs.DenseField("x"),),
    tasks=(specs.TaskSpec("ctr", "binary", "bce", 1.0),
           specs.TaskSpec("rating", "regression", "mse", 0.5)))
KEYS = ("loss", "loss/ctr", "loss/rating", "grad_norm", "param_norm")


def make_batch(n=64, seed=0):
  rng = np.random.default_rng(seed)
  weights = np.ones(n, np.float32)
  weights[-13:] = 0.0  # padding, unevenly spread over the 8 devices
  return {
      "sparse": np.stack([rng.integers(0, 50, n), rng.integers(0, 30, n)],
                         1).astype(np.int32),
      "multi_hot/m": rng.integers(-1, 20, (n, 3)).astype(np.int32),
      "sequence/s": rng.integers(-1, 50, (n, 4)).astype(np.int32),
      "dense": rng.normal(size=(n, 1)).astype(np.float32),
      "labels/ctr": rng.integers(0, 2, n).astype(np.float32),
      "labels/rating": rng.normal(size=n).astype(np.float32),
      "weights": weights,
  }


def make_config(method="ew", grads="auto", optimizer="sgd", embedding="dense",
                rep=False, clip=0.0):
  cfg = config_defaults.default_config()
  cfg.model.num_experts, cfg.model.expert_hidden = 2, (8,)
  cfg.model.tower_hidden, cfg.model.sequence_encoder = (4,), "din"
  cfg.optimizer.name, cfg.optimizer.learning_rate = optimizer, 0.1
  cfg.optimizer.embedding, cfg.optimizer.grad_clip_norm = embedding, clip
  cfg.weighting.name, cfg.weighting.mode = method, "rep" if rep else "param"
  cfg.train.embedding_grads = grads
  cfg.train.accel = "auto"  # the CPU speed path (on for the CPU backend)
  return cfg


def build(cfg, tx=None):
  model = models.build_model(SPEC, cfg.model)
  tx = tx or accel_switch.make_optimizer(cfg, 10)
  state = state_lib.create_train_state(model, tx, make_batch(), seed=0)
  step_cfg = step_lib.make_step_config(cfg, model, tx, SPEC, state.params,
                                       make_batch())
  state = state.replace(weighting_state=step_lib.init_weighting(
      step_cfg, state.params))
  return step_cfg, state


def run(cfg, mode="jit", devices=1, steps=2, fn=step_lib.train_step, tx=None):
  step_cfg, state = build(cfg, tx)
  mesh = parallel.make_mesh(devices)
  compiled = parallel.compile_step(functools.partial(fn, cfg=step_cfg), mode,
                                   mesh, out_batched=False,
                                   donate_state=fn is step_lib.train_step)
  state = parallel.replicate(state, mesh)
  history = []
  for s in range(steps):
    out = compiled(state, parallel.shard_batch(make_batch(seed=s), mode, mesh))
    if fn is step_lib.train_step:
      state, out = out
      out = {**out, **step_lib.param_norm(state.params)}  # as the loop logs
    history.append(jax.device_get(out))
  return jax.device_get(state.params), history, step_cfg


@functools.lru_cache(maxsize=None)
def dense_reference(method, rep=False, optimizer="sgd", steps=2):
  return run(make_config(method, "dense", optimizer, rep=rep), steps=steps)


def assert_same(ref, got, keys=KEYS, rtol=2e-5, atol=1e-7):
  (ref_params, ref_hist), (params, hist) = ref[:2], got[:2]
  for r, g in zip(ref_hist, hist):
    for key in keys:
      np.testing.assert_allclose(g[key], r[key], rtol=rtol, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol,
                                                       atol=atol),
               ref_params, params)


@pytest.mark.parametrize("method", ["sort", "map", "auto"])
def test_unique_slots_matches_numpy(method):
  rng = np.random.default_rng(0)
  fill = 40
  ids = rng.integers(0, 41, 200).astype(np.int32)  # 40 = ignored
  uniq, slot = jax.jit(row_grads.unique_slots, static_argnums=(1, 2, 3))(
      jnp.asarray(ids), 40, fill, method)
  real = ids < fill
  uniq, slot = np.asarray(uniq), np.asarray(slot)
  if method == "sort":
    expected = np.unique(ids[real])
  else:  # each value once, in order of first occurrence
    _, first = np.unique(ids[real], return_index=True)
    expected = ids[real][np.sort(first)]
  np.testing.assert_array_equal(uniq[:len(expected)], expected)
  assert (uniq[len(expected):] == fill).all()
  np.testing.assert_array_equal(uniq[slot[real]], ids[real])


def test_unique_slots_auto_picks_the_map_for_small_tables():
  ids = jnp.asarray([5, 3, 5, 9, 3], jnp.int32)
  small, _ = row_grads.unique_slots(ids, 5, 10)  # 10 rows <= 64 * 5 ids
  big, _ = row_grads.unique_slots(ids, 5, 10_000)
  np.testing.assert_array_equal(small, [5, 3, 9, 10, 10])  # first occurrence
  np.testing.assert_array_equal(big, [3, 5, 9, 10_000, 10_000])  # sorted


def _xla_compact(all_ids, grads, offset, size, fill):
  """row_grads.compact's XLA form for one table (unique_slots "map", then a
  scatter-add of this device's lookups)."""
  uniq, slot = row_grads.unique_slots(all_ids, size, fill, "map")
  n = grads.shape[-2]
  ids = jax.lax.dynamic_slice_in_dim(all_ids, offset, n)
  slot = jnp.where(ids < fill, jax.lax.dynamic_slice_in_dim(slot, offset, n),
                   size)
  summed = jnp.zeros(grads.shape[:-2] + (size, grads.shape[-1]), grads.dtype)
  return uniq, summed.at[..., slot, :].add(grads, mode="drop")


def test_native_compact_rows_is_the_xla_form():
  """The native kernel (mtkd_jax/accel/native/compact_rows.cc) against the XLA
  form bit for bit: repeated ids, `fill` (no row) entries, several leading
  gradients (per-term), this device's slice of the gathered ids; errors
  for an id outside [0, fill] and for more distinct ids than U."""
  from mtkd_jax.accel import native
  assert native.use("compact_rows")
  rng = np.random.default_rng(1)
  fill, n_all, n, dim = 300, 400, 100, 5
  all_ids = rng.zipf(1.3, n_all).astype(np.int64) % (fill + 1)
  all_ids = jnp.asarray(all_ids, jnp.int32)  # some == fill: no row
  grads = jnp.asarray(rng.normal(size=(3, n, dim)), jnp.float32)
  size = min(n_all, fill)
  for offset in (0, 200, 300):
    got = jax.jit(native.compact_rows, static_argnums=(3, 4))(
        all_ids, grads, offset, size, fill)
    want = jax.jit(_xla_compact, static_argnums=(3, 4))(
        all_ids, grads, offset, size, fill)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)
  distinct = len(set(np.asarray(all_ids).tolist()) - {fill})
  assert 1 < distinct < size and np.asarray(got[1]).any()
  with pytest.raises(Exception, match="more distinct ids than U"):
    jax.block_until_ready(native.compact_rows(all_ids, grads, 0, distinct - 1,
                                              fill))
  with pytest.raises(Exception, match="outside"):
    jax.block_until_ready(native.compact_rows(all_ids.at[3].set(fill + 1),
                                              grads, 0, size, fill))
  again = native.compact_rows(all_ids, grads, 0, size, fill)  # state reset
  np.testing.assert_array_equal(again[0], want[0] if offset == 0 else
                                _xla_compact(all_ids, grads, 0, size, fill)[0])


def test_default_config_keeps_the_dense_path():
  step_cfg, state = build(make_config())
  assert not step_cfg.row_grads
  assert not isinstance(state.opt_state, row_optim.SplitState)
  step_cfg, state = build(make_config(embedding="lazy_adam"))
  assert step_cfg.row_grads
  assert isinstance(state.opt_state, row_optim.SplitState)


def test_default_adam_takes_row_gradients():
  """optimizer.name="adam", optimizer.embedding="dense" (the defaults):
  dense Adam fed by row gradients, on the row path under "auto"."""
  step_cfg, state = build(make_config(optimizer="adam"))
  assert step_cfg.row_grads and step_cfg.tx.rows.moves_all_rows
  assert isinstance(state.opt_state.rows["embedding"]["sparse_table_d4"],
                    row_optim.DenseAdamState)
  step_cfg, _ = build(make_config(optimizer="adam", grads="dense"))
  assert not step_cfg.row_grads  # allowed: it takes dense gradients too


@functools.lru_cache(maxsize=None)
def optax_adam_reference(method="ew"):
  """Plain optax.adam on every param, dense table gradients."""
  return run(make_config(method, "dense", "adam"), tx=optax.adam(0.1))


@pytest.mark.parametrize("method,grads,mode,devices", ci_subset(
    [("ew", "auto", "jit", 1), ("ew", "auto", "jit", 8),
     ("ew", "auto", "pmap", 8), ("ew", "dense", "jit", 1),
     ("dbmtl", "auto", "jit", 1)],
    keep=[("ew", "auto", "jit", 1), ("ew", "auto", "pmap", 8)]))
def test_default_adam_equals_optax_adam(method, grads, mode, devices):
  """The default Adam (row-fed on the tables) against plain optax.adam;
  DB-MTL's flat gradients take the dense-gradient branch. (DB-MTL on one
  device: its direction divides by small norms, and Adam then magnifies
  the devices' float summation noise past the tolerance.) Adam moves a
  parameter by up to lr = 0.1 a step, and where a gradient entry is near
  zero m / sqrt(v) turns float noise into a visible step; DB-MTL's
  normalised direction has such entries (misses of 5e-6 and 1.6e-5 were
  seen, varying from run to run), so its parameters are compared to 1e-3
  of one step (atol 1e-4); a wrong update moves them by ~lr."""
  keys = ("loss", "loss/ctr", "loss/rating", "grad_norm", "param_norm")
  atol = 1e-4 if method == "dbmtl" else 1e-6
  assert_same(optax_adam_reference(method),
              run(make_config(method, grads, "adam"), mode, devices), keys,
              rtol=1e-5, atol=atol)


@pytest.mark.parametrize("kwargs,match", [
    (dict(grads="sparse"), "embedding_grads must be"),
    (dict(grads="dense", embedding="lazy_adam"), "needs the table gradients"),
    (dict(method="dbmtl", embedding="row_adagrad"), "running average"),
    (dict(embedding="sgd"), "Unknown embedding optimizer"),
])
def test_config_errors(kwargs, match):
  with pytest.raises(errors.ConfigError, match=match):
    build(make_config(**kwargs))


@pytest.mark.parametrize("mode,devices,method", ci_subset(
    [(mode, devices, method) for method in ("ew", "pcgrad", "mgda")
     for mode, devices in (("jit", 1), ("jit", 8), ("pmap", 8))],
    keep={("jit", 1, "ew"), ("jit", 8, "ew"), ("pmap", 8, "ew"),
          ("jit", 8, "pcgrad"), ("jit", 1, "mgda")}))
def test_row_grads_give_the_dense_update(method, mode, devices):
  keys = KEYS + (() if method == "ew" else ("weight/ctr", "weight/rating"))
  assert_same(dense_reference(method),
              run(make_config(method, "rows"), mode, devices), keys)


@pytest.mark.parametrize("method,rep", ci_subset(
    [("pcgrad", True), ("dbmtl", False)], keep=[("pcgrad", True)]))
def test_row_grads_rep_mode_and_flat_gradients(method, rep):
  """Rep-grad mode; DB-MTL's flat gradients (dense layout, exact)."""
  assert_same(dense_reference(method, rep=rep),
              run(make_config(method, "rows", rep=rep), "jit", 8))


def test_compact_gram_equals_dense_gram():
  """Per-term norms and cosines (the Gram matrix) from compact rows."""
  _, ref, _ = run(make_config("pcgrad", "dense"), steps=1,
                  fn=step_lib.gradient_diagnostics)
  for mode in ("jit", "pmap"):
    _, got, _ = run(make_config("pcgrad", "rows"), mode, 8, steps=1,
                    fn=step_lib.gradient_diagnostics)
    assert set(got[0]) == set(ref[0]) == {
        "grad_norm/ctr", "grad_norm/rating", "grad_cos/ctr/rating"}
    for key in ref[0]:
      np.testing.assert_allclose(got[0][key], ref[0][key], rtol=2e-5,
                                 err_msg=key)


def test_compact_rows_densify_to_the_table_gradient():
  """RowGrad on 8 devices == jax.grad w.r.t. the table on the full batch."""
  step_cfg, state = build(make_config("ew", "rows"))
  batch = make_batch()
  model = step_cfg.model

  def loss(params):
    out, _ = model.apply({"params": params}, batch, train=True)
    return jnp.sum(batch["weights"] * out["rating"] ** 2)

  expected = jax.grad(loss)(state.params)["embedding"]

  def per_device(params, shard):
    sites, zeros = row_grads.lookup_shapes(model, params, shard,
                                           jax.random.PRNGKey(0))
    tables, _ = row_grads.split(params, tuple(sites))

    def local(row_zeros):
      (out, _), coll = model.apply(
          {"params": params, "lookup_rows": row_zeros}, shard, train=True,
          mutable=["lookup_ids"])
      return jnp.sum(shard["weights"] * out["rating"] ** 2), coll
    g, coll = jax.grad(local, has_aux=True)(zeros)
    sites = row_grads.flatten_sites(coll["lookup_ids"])
    compacted = row_grads.compact(sites, g, tables, shard["weights"], "data")
    return {p[-1]: (r.ids, row_grads.densify(r, tables[p].shape[0]))
            for p, r in compacted.items()}

  mesh = parallel.make_mesh(8)
  fn = parallel.compile_step(per_device, "jit", mesh, out_batched=False,
                             donate_state=False)
  got = jax.device_get(fn(state.params, parallel.shard_batch(batch, "jit", mesh)))
  assert set(got) == {"sparse_table_d4", "multi_hot_m"}
  real = batch["weights"] > 0  # the rows of real examples, -1s left out
  seq = batch["sequence/s"][real]
  mh = batch["multi_hot/m"][real]
  touched = {"sparse_table_d4": set(batch["sparse"][real, 0]) |
                                set(50 + batch["sparse"][real, 1]) |
                                set(seq[seq >= 0]),
             "multi_hot_m": set(mh[mh >= 0])}
  for name, (ids, dense) in got.items():
    np.testing.assert_allclose(dense, expected[name], rtol=1e-5, atol=1e-8)
    rows = dense.shape[0]
    assert sorted(ids[ids < rows].tolist()) == sorted(touched[name])
    assert (ids[len(touched[name]):] == rows).all()  # distinct, then fill


@pytest.mark.parametrize("mode,devices,embedding", ci_subset(
    [(mode, devices, embedding) for embedding in ("lazy_adam", "row_adagrad")
     for mode, devices in (("jit", 8), ("pmap", 8))],
    keep={("jit", 8, "lazy_adam"), ("pmap", 8, "row_adagrad")}))
def test_sparse_optimizers_same_on_one_and_eight_devices(embedding, mode,
                                                         devices):
  """(SGD on the other params: Adam would magnify float noise in near-zero
  gradient entries.)"""
  cfg = make_config("pcgrad", embedding=embedding)
  ref = run(cfg, steps=3)
  assert isinstance(ref[2].tx, row_optim.SplitOptimizer)
  assert_same(ref, run(cfg, mode, devices, steps=3),
              ("loss", "grad_norm", "param_norm"), rtol=1e-4, atol=1e-6)
  # param_norm tracks the tables' norm from the changed rows only.
  params, hist = ref[:2]
  norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(params)))
  np.testing.assert_allclose(hist[-1]["param_norm"], norm, rtol=1e-5)


def test_lazy_adam_first_step_is_dense_adam():
  """At step 1 every row has m = v = 0, so dense Adam moves exactly the
  touched rows: lazy Adam's update equals it on every parameter."""
  ref = dense_reference("ew", optimizer="adam", steps=1)
  got = run(make_config("ew", optimizer="adam", embedding="lazy_adam"),
            "jit", 8, steps=1)
  assert_same(ref, got, ("loss", "grad_norm"), rtol=1e-5, atol=1e-6)


def test_clipping_counts_the_table_rows():
  """SGD on the other params + row Adagrad on the tables, clipped: the
  non-table update equals dense SGD clipped by the same global norm."""
  ref_params, ref_hist, _ = run(make_config("ew", "dense", clip=0.05), steps=1)
  params, hist, _ = run(make_config("ew", clip=0.05, embedding="row_adagrad"),
                        "jit", 8, steps=1)
  assert ref_hist[0]["grad_norm"] > 0.05  # clipping is active
  np.testing.assert_allclose(hist[0]["grad_norm"], ref_hist[0]["grad_norm"],
                             rtol=2e-5)
  for tree in (ref_params, params):  # the tables follow different optimizers
    del tree["embedding"]["sparse_table_d4"], tree["embedding"]["multi_hot_m"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                       atol=1e-7),
               ref_params, params)


@pytest.mark.parametrize("optimizer,embedding,grads", [
    ("adam", "dense", "auto"),  # SplitOptimizer: dense Adam from row gradients
    ("sgd", "dense", "dense"),  # plain optax
    ("sgd", "lazy_adam", "auto")])  # a row-sparse optimizer
def test_grad_norm_is_the_full_batch_gradient_norm(optimizer, embedding, grads):
  """The step's "grad_norm" (every step) is the norm of jax.grad of the
  total loss on the whole batch, whichever form the optimizer takes."""
  cfg = make_config("ew", grads, optimizer, embedding)
  step_cfg, state = build(cfg)
  batch = make_batch()

  def total(params):
    out, _ = step_cfg.model.apply({"params": params}, batch, train=False)
    sums, count = step_lib.task_loss_sums(out, batch, SPEC.tasks)
    return sum(t.weight * sums[t.name] for t in SPEC.tasks) / count

  want = float(optax.tree.norm(jax.grad(total)(state.params)))
  _, hist, _ = run(cfg, "jit", 8, steps=1)
  assert want > 0
  np.testing.assert_allclose(hist[0]["grad_norm"], want, rtol=1e-5)
