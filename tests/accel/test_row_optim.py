"""Row-sparse embedding optimizers against dense references.

Row-wise Adagrad against a numpy implementation of FBGEMM's
EXACT_ROWWISE_ADAGRAD; lazy Adam against optax.adam when every row is
touched at every step, dense Adam fed by rows against optax.adam (bit for bit off the batch's rows), and against a numpy reference of its lazy rule
otherwise; untouched rows and their state never change; padding slots (the
out-of-range id) are dropped; the state checkpoints with the TrainState;
the native one-pass dense Adam kernel is the XLA form bit for bit.
"""
import functools
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import synthetic_mmoe
from mtkd_jax import train
from mtkd_jax.train import checkpoint as checkpoint_lib
from mtkd_jax.accel import native
from mtkd_jax.accel import row_optim
from mtkd_jax.accel import switch as accel_switch
from mtkd_jax.train import state as state_lib

ROWS, DIM = 12, 3


def touched_steps(seed=0, steps=4, size=6):
  """Per step: (ids int32[size] sorted with fill ROWS, grads [size, DIM])."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    n = int(rng.integers(1, size))
    ids = np.sort(rng.choice(ROWS, n, replace=False))
    ids = np.concatenate([ids, np.full(size - n, ROWS)]).astype(np.int32)
    grads = rng.normal(size=(size, DIM)).astype(np.float32)
    grads[n:] = 0.0
    out.append((ids, grads))
  return out


def test_row_adagrad_matches_numpy_and_leaves_other_rows():
  lr, eps = 0.1, 1e-8
  table = np.random.default_rng(1).normal(size=(ROWS, DIM)).astype(np.float32)
  accum = np.zeros(ROWS, np.float32)
  t, state = jnp.asarray(table), row_optim.row_adagrad_init(jnp.asarray(table))
  update = jax.jit(lambda t, s, i, g: row_optim.row_adagrad_update(
      t, s, i, g, lr=lr, eps=eps))
  for ids, grads in touched_steps():
    before_t, before_a = np.asarray(t), np.asarray(state.accum)
    t, state = update(t, state, ids, grads)
    real = ids < ROWS
    for r, g in zip(ids[real], grads[real]):  # FBGEMM's rule
      accum[r] += np.mean(g * g)
      table[r] -= lr * g / (np.sqrt(accum[r]) + eps)
    np.testing.assert_allclose(t, table, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.accum, accum, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(ROWS), ids[real])
    np.testing.assert_array_equal(np.asarray(t)[untouched], before_t[untouched])
    np.testing.assert_array_equal(np.asarray(state.accum)[untouched],
                                  before_a[untouched])


def test_lazy_adam_equals_adam_when_every_row_is_touched():
  lr = 0.05
  rng = np.random.default_rng(2)
  table = jnp.asarray(rng.normal(size=(ROWS, DIM)).astype(np.float32))
  tx = optax.adam(lr)
  ref, ref_state = table, tx.init(table)
  t, state = table, row_optim.lazy_adam_init(table)
  ids = np.arange(ROWS, dtype=np.int32)
  update = jax.jit(lambda t, s, g, c: row_optim.lazy_adam_update(
      t, s, ids, g, count=c, lr=lr, b1=0.9, b2=0.999, eps=1e-8))
  for step in range(5):
    grads = jnp.asarray(rng.normal(size=(ROWS, DIM)).astype(np.float32))
    updates, ref_state = tx.update(grads, ref_state, ref)
    ref = optax.apply_updates(ref, updates)
    t, state = update(t, state, grads, jnp.int32(step))
    np.testing.assert_allclose(t, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.mu, ref_state[0].mu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(state.nu, ref_state[0].nu, rtol=1e-6, atol=1e-10)


def test_lazy_adam_touches_only_its_rows():
  lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
  table = np.random.default_rng(3).normal(size=(ROWS, DIM)).astype(np.float32)
  m, v = np.zeros_like(table), np.zeros_like(table)
  t, state = jnp.asarray(table), row_optim.lazy_adam_init(jnp.asarray(table))
  update = jax.jit(lambda t, s, i, g, c: row_optim.lazy_adam_update(
      t, s, i, g, count=c, lr=lr, b1=b1, b2=b2, eps=eps))
  for step, (ids, grads) in enumerate(touched_steps(seed=4)):
    before = [np.asarray(x) for x in (t, state.mu, state.nu)]
    t, state = update(t, state, ids, grads, jnp.int32(step))
    k = step + 1  # bias correction with the global step
    for r, g in zip(ids[ids < ROWS], grads[ids < ROWS]):
      m[r] = b1 * m[r] + (1 - b1) * g
      v[r] = b2 * v[r] + (1 - b2) * g * g
      table[r] -= lr * (m[r] / (1 - b1**k)) / (np.sqrt(v[r] / (1 - b2**k)) + eps)
    np.testing.assert_allclose(t, table, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.mu, m, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(state.nu, v, rtol=1e-5, atol=1e-10)
    untouched = np.setdiff1d(np.arange(ROWS), ids)
    for got, old in zip((t, state.mu, state.nu), before):
      np.testing.assert_array_equal(np.asarray(got)[untouched], old[untouched])


def test_dense_adam_equals_optax_adam():
  """Row-fed dense Adam (the default for optimizer.name="adam") against
  optax.adam on the densified gradient, with a schedule, step by step from
  the same state: fed the dense gradient (ids None) the table, m and v
  agree bit for bit; fed rows, bit for bit outside the batch and to the
  last bit on its rows; over 6 steps every row moves."""
  lr = optax.linear_schedule(0.05, 0.01, 4)
  rng = np.random.default_rng(5)
  table = jnp.asarray(rng.normal(size=(ROWS, DIM)).astype(np.float32))
  tx = optax.adam(lr)
  ref_update = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(g, s, p)))
  opt = row_optim.dense_adam(lr)
  assert opt.moves_all_rows
  update = jax.jit(opt.update)
  ref, ref_state = table, tx.init(table)
  for step, (ids, grads) in enumerate(touched_steps(seed=6, steps=6)):
    dense = np.zeros((ROWS, DIM), np.float32)
    dense[ids[ids < ROWS]] = grads[ids < ROWS]
    state = row_optim.DenseAdamState(ref_state[0].mu, ref_state[0].nu)
    from_rows = update(ref, state, ids, grads, jnp.int32(step))
    from_dense = update(ref, state, None, jnp.asarray(dense), jnp.int32(step))
    before = np.asarray(ref)
    ref, ref_state = ref_update(jnp.asarray(dense), ref_state, ref)
    want = (ref, ref_state[0].mu, ref_state[0].nu)
    untouched = np.setdiff1d(np.arange(ROWS), ids)
    for got_rows, got_dense, w in zip((from_rows[0],) + tuple(from_rows[1]),
                                      (from_dense[0],) + tuple(from_dense[1]),
                                      want):
      np.testing.assert_array_equal(got_dense, w)
      np.testing.assert_allclose(got_rows, w, rtol=3e-7, atol=0)
      np.testing.assert_array_equal(np.asarray(got_rows)[untouched],
                                    np.asarray(w)[untouched])
    if step:  # rows outside the batch move too (their m decays, not to 0)
      assert (np.asarray(ref)[untouched] != before[untouched]).any()


def test_split_state_checkpoints_with_the_train_state(tmp_path):
  """Orbax saves and restores the SplitState (NamedTuples, nested dicts)."""
  config = synthetic_mmoe.get_config("smoke")
  config.optimizer.embedding = "lazy_adam"
  tx = accel_switch.make_optimizer(config, 10)
  params = {"embedding": {"sparse_table_d4": jnp.ones((ROWS, DIM)),
                          "multi_hot_m": jnp.ones((5, DIM))},
            "towers": {"kernel": jnp.ones((3, 2))}}
  opt_state = tx.init(params)
  assert set(opt_state.rows["embedding"]) == {"sparse_table_d4", "multi_hot_m"}
  assert opt_state.dense[0].mu["embedding"]["sparse_table_d4"] is None
  opt_state = jax.tree.map(lambda x: x + 0.5, opt_state)
  state = state_lib.TrainState(step=jnp.int32(3), params=params,
                               opt_state=opt_state, rng=jax.random.PRNGKey(0))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.save_latest(3, state, {})
  ckpt.wait()
  like = jax.tree.map(jnp.zeros_like, state)
  restored, _ = ckpt.restore_latest(like)
  ckpt.close()
  assert isinstance(restored.opt_state, row_optim.SplitState)
  assert isinstance(restored.opt_state.rows["embedding"]["multi_hot_m"],
                    row_optim.LazyAdamState)
  jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_resume_with_a_sparse_optimizer_equals_uninterrupted(tmp_path):
  """train_and_evaluate with lazy Adam: drop the last checkpoint, run again
  (it resumes from step 10), and the results are the same."""
  config = synthetic_mmoe.get_config("smoke")
  config.optimizer.embedding = "lazy_adam"
  config.train.num_steps, config.train.tensorboard = 20, False
  workdir = tmp_path / "run"
  first = train.train_and_evaluate(config, str(workdir))
  shutil.rmtree(workdir / "checkpoints" / "20")
  ckpt = checkpoint_lib.Checkpointer(str(workdir))
  assert ckpt.latest_step() == 10  # the second run resumes from here
  ckpt.close()
  (workdir / "results.json").unlink()
  again = train.train_and_evaluate(config, str(workdir))
  for r in (first, again):
    r.get("model", {}).pop("latency_ms_per_batch", None)
  assert again == first


def _adam_case(seed, rows=1000, dim=16, size=300, steps=5):
  """A table, zero moments and `steps` row gradients (distinct ids, padded
  with the out-of-range id `rows`)."""
  rng = np.random.default_rng(seed)
  table = jnp.asarray(rng.normal(size=(rows, dim)).astype(np.float32))
  batches = []
  for _ in range(steps):
    n = int(rng.integers(size // 2, size))
    ids = np.full(size, rows, np.int32)
    ids[:n] = rng.choice(rows, n, replace=False)
    grads = rng.normal(size=(size, dim)).astype(np.float32)
    grads[n:] = 0.0
    batches.append((jnp.asarray(ids), jnp.asarray(grads)))
  return table, batches


def test_native_dense_adam_is_the_xla_form():
  """The one-pass kernel (mtkd_jax/accel/native/dense_adam.cc) against the XLA form
  of the same update, step by step with a schedule: table, m and v equal
  bit for bit; padding slots are skipped."""
  assert native.available()  # CI has a C++ compiler
  lr = optax.linear_schedule(0.05, 0.01, 4)
  table, batches = _adam_case(0)
  updates = {
      flag: jax.jit(lambda t, s, i, g, c, flag=flag: row_optim.dense_adam_update(
          t, s, i, g, count=c, lr=lr(c), b1=0.9, b2=0.999, eps=1e-8,
          native=flag))
      for flag in (True, False)}
  zeros = jnp.zeros_like(table)
  got = want = (table, row_optim.DenseAdamState(zeros, zeros))
  for step, (ids, grads) in enumerate(batches):
    got = updates[True](*got, ids, grads, jnp.int32(step))
    want = updates[False](*want, ids, grads, jnp.int32(step))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(g, w)
  assert not np.array_equal(got[0], table)


def test_native_dense_adam_under_vmap_and_with_duplicate_ids():
  """Under vmap (two seeds' tables at once, as multiseed training does) each
  slice is its own update; a repeated row id is an error, not a silent
  last-writer-wins."""
  (t0, b0), (t1, b1) = _adam_case(1, steps=1), _adam_case(2, steps=1)
  zeros = jnp.zeros_like(t0)
  state = row_optim.DenseAdamState(zeros, zeros)
  def update(t, s, i, g):
    return row_optim.dense_adam_update(t, s, i, g, count=jnp.int32(0),
                                       lr=0.01, b1=0.9, b2=0.999, eps=1e-8,
                                       native=True)
  stack = lambda *xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
  got = jax.jit(jax.vmap(update))(stack(t0, t1), stack(state, state),
                                   stack(b0[0][0], b1[0][0]),
                                   stack(b0[0][1], b1[0][1]))
  for k, (t, ((ids, grads),)) in enumerate(((t0, b0), (t1, b1))):
    one = jax.jit(update)(t, state, ids, grads)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(one)):
      np.testing.assert_array_equal(g[k], w)
  ids, grads = b0[0]
  ids = ids.at[1].set(ids[0])
  with pytest.raises(Exception, match="duplicate row id"):
    jax.block_until_ready(jax.jit(update)(t0, state, ids, grads))


def _fma(a, b, c):
  """float32 fma(a, b, c) (a * b is exact in float64; one rounding to
  float64, then to float32: agrees with a single rounding but in cases of
  probability ~2^-29 per element)."""
  return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


def _adam_reference(w, m, v, g, count, lr, b1=0.9, b2=0.999, eps=1e-8):
  """numpy float32: the native "adam" kernel's documented operations."""
  f32 = np.float32
  t = count + 1
  r1, r2 = (np.asarray(jax.jit(lambda c, b=b: 1 / (1 - b ** c).astype(
      jnp.float32))(jnp.int32(t))) for b in (b1, b2))
  m = _fma(f32(1 - b1), g, f32(b1) * m)
  v = _fma(f32(1 - b2), g * g, f32(b2) * v)
  u = (m * r1) / (np.sqrt(v * r2) + f32(eps))
  return _fma(u, -f32(lr), w), m, v


def test_native_adam_is_optax_adam():
  """The native "adam" kernel on the non-table params (SplitOptimizer's
  path for optimizer.name="adam"), step by step with a schedule, against
  optax.adam: the same state structure and counts; m and v bit for bit;
  the params to float rounding (XLA itself rewrites optax's m_hat /
  (sqrt(v_hat) + eps) as m / (c1 (sqrt(v_hat) + eps)) in some programs and
  not in others), and bit for bit the kernel's documented floats (numpy).
  Arrays larger than a chunk, small ones and None leaves."""
  assert native.use("adam")
  rng = np.random.default_rng(3)
  params = {"experts": {"kernel_0": rng.normal(size=(40, 3, 300)),
                        "bias_0": rng.normal(size=(3, 300))},
            "gate": rng.normal(size=(7,)), "table": None}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  lr = optax.linear_schedule(0.05, 0.01, 4)
  tx = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
  cfg = row_optim.AdamConfig(lr, 0.9, 0.999, 1e-8)
  ref_step = jax.jit(lambda p, s, g: (lambda u, s: (
      optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
  step = jax.jit(functools.partial(row_optim._optax_adam_step, cfg))
  ref, ref_state = params, tx.init(params)
  got, state = params, tx.init(params)
  for k in range(5):
    grads = jax.tree.map(lambda x: jnp.asarray(
        rng.normal(size=x.shape), jnp.float32) * 0.1, params)
    want = [_adam_reference(*map(np.asarray, leaves), k, lr(k)) for leaves in
            zip(*(jax.tree.leaves(x) for x in (got, state[0].mu, state[0].nu,
                                                grads)))]
    ref, ref_state = ref_step(ref, ref_state, grads)
    got, state = step(got, grads, state)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    assert int(state[0].count) == int(state[1].count) == k + 1
    jax.tree.map(np.testing.assert_array_equal, state, ref_state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(  # ~1 ulp of
        a, b, rtol=2e-6, atol=1e-7), got, ref)  # lr * m_hat / sqrt(v_hat)
    for (w, m, v), leaves in zip(want, zip(*(jax.tree.leaves(x) for x in (
        got, state[0].mu, state[0].nu)))):
      for a, b in zip((w, m, v), leaves):
        np.testing.assert_array_equal(a, b)
    ref, ref_state = got, state  # from the same state next step


def test_native_adam_under_vmap_and_through_make_optimizer():
  """Under vmap (multiseed training) each slice is its own update; the
  optimizer of optimizer.name="adam" takes the kernel path and keeps
  optax's state, so `tx.init` and checkpoints are unchanged."""
  params = {"a": jnp.arange(20000, dtype=jnp.float32).reshape(100, 200) / 1e4,
            "b": jnp.ones((3,), jnp.float32)}
  grads = jax.tree.map(lambda x: jnp.cos(x) * 0.1, params)
  config = synthetic_mmoe.get_config("smoke")
  assert config.optimizer.name == "adam"
  config.train.accel = "auto"  # on for the CPU backend
  tx = accel_switch.make_optimizer(config, 10)
  assert isinstance(tx, row_optim.SplitOptimizer) and tx.adam is not None
  opt_state = tx.dense.init(params)
  step = lambda p, g, s: row_optim._optax_adam_step(tx.adam, p, g, s)
  one = [jax.jit(step)(jax.tree.map(lambda x: x * c, params), grads,
                       opt_state) for c in (1.0, 2.0)]
  stack = lambda *xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
  both = jax.jit(jax.vmap(step))(
      stack(*(jax.tree.map(lambda x: x * c, params) for c in (1.0, 2.0))),
      stack(grads, grads), stack(opt_state, opt_state))
  for k in range(2):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[k], b),
                 both, one[k])
  with pytest.raises(ValueError, match="optax.adam"):
    row_optim._optax_adam_step(tx.adam, params, grads,
                               optax.sgd(0.1).init(params))


@pytest.mark.parametrize("env", [{"MTKD_JAX_NATIVE": "0"},
                                 {"CXX": "/nonexistent/c++"}])
def test_native_kernels_fall_back_to_xla(tmp_path, env):
  """Switched off, or with no compiler, `available()` is False (with a
  warning for the latter) and the default table optimizer still trains."""
  code = ("from mtkd_jax.accel import native; from mtkd_jax.accel import row_optim; import jax.numpy as jnp;"
          "print(native.available());"
          "t = jnp.ones((4, 2)); s = row_optim.DenseAdamState(t * 0, t * 0);"
          "out = row_optim.dense_adam_update(t, s, jnp.array([1, 4], jnp.int32),"
          " jnp.ones((2, 2)), count=jnp.int32(0), lr=0.1, b1=0.9, b2=0.999,"
          " eps=1e-8); print(float(out[0][1, 0]), float(out[0][0, 0]))")
  proc = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True,
      env={**os.environ, "MTKD_JAX_CACHE_DIR": str(tmp_path), **env},
      cwd=pathlib.Path(__file__).parents[2], timeout=120)
  assert proc.returncode == 0, proc.stderr
  available, row1, row0 = proc.stdout.split()
  assert available == "False"
  assert float(row1) == pytest.approx(0.9) and float(row0) == 1.0
  if "CXX" in env:
    assert "native kernels unavailable" in proc.stderr
