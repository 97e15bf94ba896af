"""Row-sparse optimizers for embedding tables (`optimizer.embedding`).

A step's cost with these grows with the rows the batch touches, not with the
table: each update is a pure function of

  (table float[rows, d], its row state, ids int32[U], grads float[U, d])

(a `row_grads.RowGrad`: the touched rows, distinct, padded with the
out-of-range id `rows`), and reads and writes only those rows with
`.at[ids].get/set/add(..., mode="fill"/"drop")`, so padding slots are
dropped. The other parameters keep the configured optax optimizer
(`SplitOptimizer`).

row_adagrad: row-wise Adagrad, as DLRM / TorchRec / FBGEMM
  (`EXACT_ROWWISE_ADAGRAD`): ONE accumulator per row,
    a_r <- a_r + mean_j g_rj^2,   w_r <- w_r - lr g_r / (sqrt(a_r) + eps).
  Rows outside the batch have zero gradient, and with a zero gradient this
  update changes nothing, so the sparse update IS the dense row-wise
  Adagrad update (not an approximation of it). It differs from dense Adam
  in being another optimizer: no momentum, no bias correction, a per-row
  (not per-entry) step size that only decays, state 1 float per row instead
  of 2 per entry. The accumulator starts at 0 (FBGEMM's default).

lazy_adam: Adam on the touched rows only (TF-Addons / Keras LazyAdam): for
  r in ids, m_r <- b1 m_r + (1 - b1) g_r, v_r <- b2 v_r + (1 - b2) g_r^2,
  w_r <- w_r - lr m_hat_r / (sqrt(v_hat_r) + eps) with the bias corrections
  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t) at the GLOBAL step t (the
  optimizer's update count), as LazyAdam does. The formula (eps added to
  sqrt(v_hat), the bias corrections applied to m and v) is optax.adam's, so
  on a row touched at every step it equals dense Adam exactly; TF's LazyAdam
  folds the corrections into the learning rate, i.e. its eps is
  eps sqrt(1 - b2^t) in these terms. How it differs from dense Adam:
    * a row outside the batch does not move, and its m and v do not decay;
      dense Adam moves every row that ever had a gradient by its decaying
      momentum, lr m_hat / (sqrt(v_hat) + eps), at every step;
    * so when a row comes back after k steps away, its m and v are those of
      its last visit, not b1^k m and b2^k v, and the step it takes then is
      correspondingly larger than dense Adam's;
    * the bias correction uses the global step, so a row first touched at
      step t takes the same step as under dense Adam at that step (its m and
      v are 0 until then in both).
  State: m and v, 2 floats per entry, as dense Adam.

adam (what `optimizer.embedding="dense"` runs when `optimizer.name` is
  "adam"): exact dense Adam, fed by the row gradient. Every row's m and v
  decay and every row moves, as in `optax.adam` on the dense gradient, but
  the step never forms that gradient: with g zero outside the rows `ids`,
    m <- b1 m (all rows), then m_r += (1 - b1) g_r (r in ids),
    v <- b2 v (all rows), then v_r += (1 - b2) g_r^2 (r in ids),
    w <- w - lr m_hat / (sqrt(v_hat) + eps) (all rows),
  the float operations of optax's (1 - b1) g + b1 m, whose first product is
  exactly 0 outside the batch. Against `optax.adam` on the densified
  gradient: rows outside the batch agree bit for bit; on the batch's rows m
  and v may differ in the last bit, as XLA fuses optax's a * b + c into one
  rounding where the scatter-add rounds twice (tests/accel/test_row_optim.py).
  The dense passes remain (every row moves), but the dense gradient's zero
  fill, its scatter, its square and its norm go. On CPU the update runs as
  one native pass over w, m and v (`native/dense_adam.cc`, the same floats
  bit for bit) where XLA makes three.
  State: m and v, 2 floats per entry, as optax.adam.

With optimizer.name "adam", `SplitOptimizer` updates the other parameters
with `adam_update` (optax.adam's state, formula and floats; on CPU one call
of the native kernel "adam" for all of them, where XLA runs one fusion per
array).

The row-sparse ones (row_adagrad, lazy_adam) apply no weight decay to the tables (it would touch every row);
`optimizer.weight_decay` acts on the other parameters only. Gradient
clipping (`optimizer.grad_clip_norm`) acts on the global norm of the whole
gradient, the tables' compact rows included, as `clip_by_global_norm`.
"""
import dataclasses
from typing import Any, Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from mtkd_jax.models import embedding
from mtkd_jax.accel import native as native_kernels
from mtkd_jax.accel import row_grads as row_grads_lib


class RowAdagradState(NamedTuple):
  accum: jax.Array  # float32[rows]: sum over updates of mean_j g_rj^2


class LazyAdamState(NamedTuple):
  mu: jax.Array  # float32[rows, d]
  nu: jax.Array  # float32[rows, d]


class DenseAdamState(NamedTuple):
  mu: jax.Array  # float32[rows, d]
  nu: jax.Array  # float32[rows, d]


def _rows(x, ids):
  """x[ids] with zeros for the out-of-range padding ids."""
  return x.at[ids].get(mode="fill", fill_value=0)


def _add_rows(table, ids, delta):
  """table with rows `ids` += delta (padding ids dropped).

  Written as a gather then a `set` of the sums, so the write depends on the
  read: XLA then updates the (donated) table in place. An independent read
  of the rows next to an `.add` scatter made it copy the whole table.
  """
  return table.at[ids].set(_rows(table, ids) + delta.astype(table.dtype),
                           mode="drop")


def row_adagrad_init(table: jax.Array, initial_accumulator_value: float = 0.0
                     ) -> RowAdagradState:
  return RowAdagradState(jnp.full(table.shape[:1], initial_accumulator_value,
                                  table.dtype))


def row_adagrad_update(table, state: RowAdagradState, ids, grads, *, lr,
                       eps: float):
  """One row-wise Adagrad step on the rows `ids` (see the module docstring).

  Args:
    table: float[rows, d].
    state: its RowAdagradState.
    ids: int32[U], distinct except for the out-of-range id `rows` (dropped).
    grads: float[U, d].
    lr: the learning rate (a scalar).
    eps: added to the accumulator's square root.
  Returns:
    (table, state) with only the rows `ids` changed.
  """
  accum = _rows(state.accum, ids) + jnp.mean(grads * grads, axis=-1)
  delta = -lr * grads / (jnp.sqrt(accum)[:, None] + eps)
  return (_add_rows(table, ids, delta),
          RowAdagradState(state.accum.at[ids].set(accum, mode="drop")))


def lazy_adam_init(table: jax.Array) -> LazyAdamState:
  return LazyAdamState(jnp.zeros_like(table), jnp.zeros_like(table))


def lazy_adam_update(table, state: LazyAdamState, ids, grads, *, count, lr,
                     b1: float, b2: float, eps: float):
  """One lazy Adam step on the rows `ids` (see the module docstring).

  Args:
    table: float[rows, d].
    state: its LazyAdamState.
    ids: int32[U], distinct except for the out-of-range id `rows` (dropped).
    grads: float[U, d].
    count: int32, the number of updates done before this one (t = count + 1).
    lr: the learning rate (a scalar).
    b1, b2, eps: Adam's.
  Returns:
    (table, state) with only the rows `ids` (and their m, v) changed.
  """
  t = count + 1
  mu = (1 - b1) * grads + b1 * _rows(state.mu, ids)
  nu = (1 - b2) * grads ** 2 + b2 * _rows(state.nu, ids)
  mu_hat = mu / (1 - b1 ** t).astype(mu.dtype)
  nu_hat = nu / (1 - b2 ** t).astype(nu.dtype)
  delta = -lr * (mu_hat / (jnp.sqrt(nu_hat) + eps))
  return (_add_rows(table, ids, delta),
          LazyAdamState(state.mu.at[ids].set(mu, mode="drop"),
                        state.nu.at[ids].set(nu, mode="drop")))


def dense_adam_update(table, state: DenseAdamState, ids, grads, *, count, lr,
                      b1: float, b2: float, eps: float, native=None):
  """One exact dense Adam step from the row gradient (module docstring).

  Args:
    table: float[rows, d].
    state: its DenseAdamState.
    ids: int32[U], distinct except for the out-of-range id `rows` (dropped);
      None: `grads` is the dense gradient [rows, d].
    grads: float[U, d]; the table's gradient is zero outside `ids`.
    count: int32, the number of updates done before this one (t = count + 1).
    lr: the learning rate (a scalar).
    b1, b2, eps: Adam's.
    native: None: the one-pass native kernel (`accel/native`) when it can
      run (float32 on CPU, kernel built); False: the XLA form; True: the
      kernel or an error. Both give the same floats, bit for bit
      (tests/accel/test_row_optim.py).
  Returns:
    (table, state): every row updated, as `optax.adam` on the dense gradient.
  """
  if ids is not None and _use_native_kernel(
      native, "dense_adam", (table, state.mu, state.nu, grads),
      table.ndim == 2, "float32 [rows, d] tables"):
    table, mu, nu = native_kernels.dense_adam(
        table, state.mu, state.nu, ids.astype(jnp.int32), grads,
        _adam_scalars(count, lr, b1, b2), b1=b1, b2=b2, eps=eps)
    return table, DenseAdamState(mu, nu)
  if ids is None:  # a dense gradient (`row_grads.all_rows`): optax's formula
    mu = (1 - b1) * grads + b1 * state.mu
    nu = (1 - b2) * grads ** 2 + b2 * state.nu
  else:  # optax: (1 - b1) g + b1 m, whose first product is 0 outside `ids`.
    # b1 m is decayed in place (m has no other reader); reading m's rows
    # for a `set` instead made XLA copy the whole m and v every step.
    mu = (b1 * state.mu).at[ids].add((1 - b1) * grads, mode="drop")
    nu = (b2 * state.nu).at[ids].add((1 - b2) * grads ** 2, mode="drop")
  t = count + 1
  mu_hat = mu / (1 - b1 ** t).astype(mu.dtype)
  nu_hat = nu / (1 - b2 ** t).astype(nu.dtype)
  update = mu_hat / (jnp.sqrt(nu_hat) + eps) * -lr
  return table + update.astype(table.dtype), DenseAdamState(mu, nu)


def adam_update(params, mu, nu, grads, *, count, lr, b1: float, b2: float,
                eps: float, native=None):
  """optax.adam's step on pytrees of arrays (None leaves skipped), bit for bit.

  Args:
    params, mu, nu, grads: pytrees of the same structure.
    count: int32, the updates done before this one (t = count + 1).
    lr: the learning rate (a scalar).
    b1, b2, eps: Adam's.
    native: None: every float32 leaf in one call of the native kernel
      "adam" (`accel/native/dense_adam.cc`) when it can run; False: the
      XLA form (optax's formula, which XLA fuses per leaf); True: the kernel
      or an error.
  Returns:
    (params, mu, nu). The same floats as `optax.apply_updates(params,
    optax.adam(lr).update(grads, ...))` (tests/accel/test_row_optim.py). XLA
    updates the leaves one fusion at a time; the kernel cuts all leaves into
    one pool of chunks.
  """
  leaves, tree = jax.tree.flatten(params)
  mus, nus, gs = (tree.flatten_up_to(x) for x in (mu, nu, grads))
  if leaves and _use_native_kernel(native, "adam", leaves + mus + nus + gs,
                                   True, "float32 parameters"):
    new, mus, nus = native_kernels.adam(
        leaves, mus, nus, gs, _adam_scalars(count, lr, b1, b2),
        b1=b1, b2=b2, eps=eps)
  else:  # dense_adam_update's form for a dense gradient, leaf by leaf
    new = [dense_adam_update(p, DenseAdamState(m, v), None, g, count=count,
                             lr=lr, b1=b1, b2=b2, eps=eps, native=False)
           for p, m, v, g in zip(leaves, mus, nus, gs)]
    new, mus, nus = ([p for p, _ in new], [st.mu for _, st in new],
                     [st.nu for _, st in new])
  return tuple(tree.unflatten(x) for x in (new, mus, nus))


class AdamConfig(NamedTuple):
  """optax.adam(schedule, b1, b2, eps)'s settings, for `SplitOptimizer`."""
  schedule: Callable[[jax.Array], jax.Array]
  b1: float
  b2: float
  eps: float


def _adam_scalars(count, lr, b1, b2):
  """The Adam kernels' scalars: 1 / (1 - b1^t), 1 / (1 - b2^t), lr
  (t = count + 1), as XLA computes optax's bias corrections."""
  t = count + 1
  return jnp.stack([1 / (1 - b1 ** t).astype(jnp.float32),
                    1 / (1 - b2 ** t).astype(jnp.float32),
                    jnp.asarray(lr, jnp.float32)])


def _use_native_kernel(native, kernel: str, arrays, shape_ok: bool,
                       needs: str) -> bool:
  """Whether to run native `kernel` on `arrays`: `native` False: no; None:
  when it can (float32 on CPU, `shape_ok`, the kernel built); True: yes, or
  an error saying it needs `needs`."""
  if native is False:
    return False
  fits = (shape_ok and jax.default_backend() == "cpu" and
          all(x.dtype == jnp.float32 for x in arrays))
  if native is None:
    return fits and native_kernels.use(kernel)
  if not (fits and native_kernels.use(kernel)):
    raise ValueError(f"The native {kernel} kernel needs {needs} on CPU and a "
                     "C++ compiler (mtkd_jax/accel/native).")
  return True


class RowOptimizer(NamedTuple):
  init: Callable[[jax.Array], Any]  # table -> row state
  # (table, state, ids, grads, count) -> (table, state)
  update: Callable[..., Any]
  # True: the update moves rows outside `ids` too (a dense optimizer fed by
  # row gradients); it then also accepts a dense gradient as the RowGrad of
  # every row (`row_grads.all_rows`, ids None).
  moves_all_rows: bool = False
  name: str = ""


def row_adagrad(learning_rate, eps: float = 1e-8,
                initial_accumulator_value: float = 0.0) -> RowOptimizer:
  """Row-wise Adagrad; `learning_rate` a float or an optax schedule."""
  schedule = _as_schedule(learning_rate)

  def update(table, state, ids, grads, count):
    return row_adagrad_update(table, state, ids, grads, lr=schedule(count),
                              eps=eps)
  return RowOptimizer(
      lambda t: row_adagrad_init(t, initial_accumulator_value), update,
      name="row_adagrad")


def lazy_adam(learning_rate, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> RowOptimizer:
  """Lazy Adam; `learning_rate` a float or an optax schedule."""
  schedule = _as_schedule(learning_rate)

  def update(table, state, ids, grads, count):
    return lazy_adam_update(table, state, ids, grads, count=count,
                            lr=schedule(count), b1=b1, b2=b2, eps=eps)
  return RowOptimizer(lazy_adam_init, update, name="lazy_adam")


def dense_adam(learning_rate, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8) -> RowOptimizer:
  """Exact dense Adam from row gradients; `learning_rate` a float or an
  optax schedule."""
  schedule = _as_schedule(learning_rate)

  def init(table):
    return DenseAdamState(jnp.zeros_like(table), jnp.zeros_like(table))

  def update(table, state, ids, grads, count):
    return dense_adam_update(table, state, ids, grads, count=count,
                             lr=schedule(count), b1=b1, b2=b2, eps=eps)
  return RowOptimizer(init, update, moves_all_rows=True, name="dense_adam")


def _as_schedule(learning_rate):
  return learning_rate if callable(learning_rate) else (lambda _: learning_rate)


# name -> (schedule, optimizer config block) -> RowOptimizer
ROW_OPTIMIZERS = {
    "adam": lambda lr, cfg: dense_adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
    "row_adagrad": lambda lr, cfg: row_adagrad(lr, eps=cfg.eps),
    "lazy_adam": lambda lr, cfg: lazy_adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
}


class SplitState(NamedTuple):
  dense: Any  # the optax state of the non-table params (None at the tables)
  rows: Any  # the row states, nested like the params ({module: {table: ..}})
  count: jax.Array  # int32, updates done (the row optimizers' global step)


@dataclasses.dataclass(frozen=True)
class SplitOptimizer:
  """Row-sparse updates for the embedding tables, optax for the rest.

  `init(params)` is the TrainState's `opt_state`; the train step calls
  `apply` with the gradient, whose table leaves are compact rows.

  Attributes:
    dense: the optax transformation of the other params (no clipping).
    rows: the tables' RowOptimizer.
    clip_norm: > 0 clips the whole gradient (tables' rows included) to this
      global norm first, as `optax.clip_by_global_norm`.
    adam: when `dense` is `optax.adam` with these settings, the other params
      are updated by `adam_update` (its native kernel; optax's floats and
      optax's state), else by `dense`.
  """
  dense: optax.GradientTransformation
  rows: RowOptimizer
  clip_norm: float = 0.0
  adam: Any = None  # an AdamConfig or None

  def init(self, params) -> SplitState:
    tables, rest = row_grads_lib.split(params, table_paths(params))
    return SplitState(
        dense=self.dense.init(rest),
        rows=traverse_util.unflatten_dict(
            {p: self.rows.init(t) for p, t in tables.items()}),
        count=jnp.zeros((), jnp.int32))

  def apply(self, params, state: SplitState, grads, row_ids=None):
    """One update.

    Args:
      params: the full params.
      state: the SplitState.
      grads: the gradient, params-shaped; its table leaves are compact rows
        [U, d] (rows `row_ids`), or dense when `row_ids` is None (only for
        optimizers that move every row).
      row_ids: {table path: int32[U]}, or None.
    Returns:
      (params, state, the global gradient norm before clipping).
    """
    row_states = traverse_util.flatten_dict(state.rows)
    if row_ids is None:
      if not self.rows.moves_all_rows:
        raise ValueError("A row-sparse embedding optimizer needs the row path "
                         "(StepConfig.row_grads) and a method without a flat "
                         "gradient direction.")
      tables, grads = row_grads_lib.split(grads, tuple(row_states))
      row_grads = {p: row_grads_lib.all_rows(g) for p, g in tables.items()}
    else:
      tables, grads = row_grads_lib.split(grads, tuple(row_ids))
      row_grads = {p: row_grads_lib.RowGrad(ids, tables[p])
                   for p, ids in row_ids.items()}
    if set(row_states) != set(row_grads):
      raise ValueError(f"Row gradients for tables {sorted(row_grads)} but "
                       f"optimizer state for {sorted(row_states)}.")
    sq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
    norm = jnp.sqrt(sq + sum(jnp.sum(jnp.square(r.grads))
                             for r in row_grads.values()))
    if self.clip_norm:
      scale = jnp.where(norm < self.clip_norm, 1.0,
                        self.clip_norm / jnp.maximum(norm, 1e-30))
      grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
      row_grads = {p: r._replace(grads=r.grads * scale.astype(r.grads.dtype))
                   for p, r in row_grads.items()}
    tables, rest = row_grads_lib.split(params, tuple(row_grads))
    if self.adam is not None and native_kernels.use("adam"):
      rest, dense_state = _optax_adam_step(self.adam, rest, grads, state.dense)
    else:
      updates, dense_state = self.dense.update(grads, state.dense, rest)
      rest = optax.apply_updates(rest, updates)
    new_rows = {}
    for path, r in row_grads.items():
      tables[path], new_rows[path] = self.rows.update(
          tables[path], row_states[path], r.ids, r.grads, state.count)
    new_state = SplitState(dense_state, traverse_util.unflatten_dict(new_rows),
                           state.count + 1)
    return row_grads_lib.merge(tables, rest), new_state, norm


def optax_update(tx: optax.GradientTransformation):
  """The step's update with an optax `tx`: (params, opt_state, grads,
  row_ids) -> (params, opt_state, grad_norm), compact table rows densified
  first."""
  def update(params, opt_state, grads, row_ids=None):
    if row_ids is not None:
      flat = traverse_util.flatten_dict(params)
      grads = row_grads_lib.densify_leaves(
          grads, row_ids, {p: flat[p] for p in row_ids})
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            optax.tree.norm(grads))
  return update


def _optax_adam_step(cfg: AdamConfig, params, grads, state):
  """(params, state) after `optax.adam(cfg.schedule, ...)`'s update, applied:
  `adam_update` on optax's state (ScaleByAdamState, ScaleByScheduleState)."""
  if not (isinstance(state, tuple) and len(state) == 2 and
          isinstance(state[0], optax.ScaleByAdamState) and
          isinstance(state[1], optax.ScaleByScheduleState)):
    raise ValueError(f"SplitOptimizer.adam needs optax.adam(schedule)'s "
                     f"state, got {type(state).__name__}")
  adam_state, schedule_state = state
  params, mu, nu = adam_update(
      params, adam_state.mu, adam_state.nu, grads, count=adam_state.count,
      lr=cfg.schedule(schedule_state.count), b1=cfg.b1, b2=cfg.b2,
      eps=cfg.eps)
  return params, (
      optax.ScaleByAdamState(optax.safe_increment(adam_state.count), mu, nu),
      optax.ScaleByScheduleState(optax.safe_increment(schedule_state.count)))


def table_paths(params):
  """The paths (tuples of str) of FeatureEmbedding's tables in `params`."""
  flat = traverse_util.flatten_dict(params)
  return tuple(p for p, x in flat.items() if embedding.is_table(p, x))
