"""Per-device train and eval steps (pmap-style), pure and jit-compiled once.

The functions here run on one device's shard of the global batch and use
explicit collectives over the `data` axis; `parallel.py` runs them under
`jax.jit` + `shard_map` on a device mesh or under `jax.pmap`.

Loss terms. The model's tasks (and any auxiliary losses a model returns in
`aux.aux_losses`, e.g. AITM's calibrator) are named terms
L'_t = w_t * L_t, where w_t is the term's fixed weight (the task spec's) and
L_t the global weighted mean of its per-example loss. A weighting method
(`mtkd_jax.weighting`) turns them into coefficients c_t; the update follows
  g = sum_t c_t grad(L'_t)   on shared parameters,
and sum_t s_t grad(L'_t) on task-specific ones (s_t = c_t for loss weighting,
1 for gradient surgery). Fixed weights with the `ew` method give the plain
total sum_t w_t L_t.

Gradients. Each device differentiates its LOCAL share of every global mean,
sum_{i in shard} w_i l_i / sum_{all i} w_i, and the shares are summed
(`psum`) across devices; this is exact with padding and equals the single-
device full-batch gradient. Methods that need per-term gradients get them in
one pass (one forward, `vmap` of the VJP over one-hot cotangents) and see
their inner products (Gram matrix) only after the cross-device sum, so the
update is the same on 1 device and on 8.

Row gradients (`StepConfig.row_grads`, `train.embedding_grads="rows"`):
the step differentiates w.r.t. the rows FeatureEmbedding gathers instead of
the embedding tables (held constant), and gets one compact, exact gradient
per table, the same on every device (`row_grads.RowGrad`: the global batch's
touched rows and their summed gradients). Per-term methods then see Gram
matrices and combine gradients over [T, U, d] instead of [T, rows, d]. The
combined table gradient goes to the optimizer either scattered into the
dense table shape (dense optimizers: the same update as the dense path) or
as rows (`row_optim.SplitOptimizer`: row-sparse optimizers).
"""
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax
from flax import traverse_util
from jax.flatten_util import ravel_pytree

from mtkd_jax import errors
from mtkd_jax import losses as losses_lib
from mtkd_jax import weighting
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.distill import plugin as distill_plugin
from mtkd_jax.models import base as model_base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers
from mtkd_jax.train import collectives
from mtkd_jax.train import row_grads as row_grads_lib
from mtkd_jax.train import row_optim
from mtkd_jax.train import state as state_lib
from mtkd_jax.weighting import base as weighting_base

AXIS = "data"
PERTURBATIONS = "perturbations"


def task_loss_sums(outputs, batch, tasks: Sequence[specs_lib.TaskSpec]):
  """name -> (sum_i w_i l_t(i), sum_i w_i) over this device's rows."""
  weights = batch["weights"]
  sums = {}
  for task in tasks:
    per_example = losses_lib.get_loss(task.loss)(
        outputs[task.name], batch[f"labels/{task.name}"])
    sums[task.name] = losses_lib.weighted_sum_and_count(per_example, weights)[0]
  return sums, jnp.sum(weights)


def term_names(model: nn.Module, params, batch,
               tasks: Sequence[specs_lib.TaskSpec], distill=None
               ) -> Tuple[str, ...]:
  """The step's loss terms: the tasks, the model's `aux_losses` names, then
  the distillation terms (kd/..., rank/...)."""
  _, aux = jax.eval_shape(
      lambda p: model.apply({"params": p}, batch, train=False), params)
  names = tuple(t.name for t in tasks) + tuple(sorted(aux.aux_losses))
  return names + (distill.term_names() if distill is not None else ())


def is_task_specific(path, model: nn.Module) -> bool:
  """Whether a parameter belongs to one task only (e.g. under "towers"):
  the model's `task_specific_params` (models/base.py), and the params
  distillation adds (the hint projector, `distill_plugin.EXTRA_PARAMS`)."""
  return (model_base.is_task_specific(path, model) or
          model_base.top_name(path) in distill_plugin.EXTRA_PARAMS)


# Metrics computed on some updates only (StepConfig.norm_periods and
# norm_last_step), NaN on the others: a mean over steps skips the NaN
# (loop.mean_metrics).
NORM_METRICS = ("grad_norm", "param_norm")


class StepConfig:
  """Static pieces of the step (bound with functools.partial)."""

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation,
               tasks: Sequence[specs_lib.TaskSpec], terms: Sequence[str],
               method: weighting_base.WeightingMethod, method_params=None,
               rep_grad: bool = False, distill=None,
               row_grads: bool = False, compute_dtype=None,
               norm_periods: Sequence[int] = (1,), norm_last_step: int = 0):
    self.model, self.tx, self.tasks, self.terms = model, tx, tuple(tasks), tuple(terms)
    # The "grad_norm" / "param_norm" metrics only on the updates whose number
    # is a multiple of one of `norm_periods` or is `norm_last_step` (the
    # loop's: every step whose metrics it reads, see `make_step_config`),
    # NaN on the others. They cost a pass over every parameter and gradient
    # (dense Adam's tables included): 1.0 ms of the 47 ms MMoE step of
    # BENCHMARK.md on 2 cores (benchmarks.step_ab). Gradient clipping computes the gradient norm
    # every step anyway.
    self.norm_periods = tuple(int(p) for p in norm_periods if p)
    self.norm_last_step = int(norm_last_step)
    # Table gradients as rows (row_grads.py); a row-sparse optimizer needs them.
    self.row_grads = row_grads or (isinstance(tx, row_optim.SplitOptimizer)
                                   and not tx.rows.moves_all_rows)
    self.distill = distill  # extra terms (distill_plugin.Distillation.spec)
    self.compute_dtype = compute_dtype  # None: the params' own (float32)
    fixed = ({t.name: t.weight for t in tasks} if distill is None
             else distill.fixed_weights(tasks))
    self.fixed_weights = jnp.asarray([fixed.get(n, 1.0) for n in self.terms],
                                     jnp.float32)
    self.method, self.method_params, self.rep_grad = method, method_params, rep_grad


def make_step_config(config, model, tx, spec, params, example_batch,
                     distill=None, total_steps: int = 0):
  """The step's static pieces: terms, weighting method, gradient mode.

  Args:
    distill: the extra terms, `distill_plugin.Distillation.spec` (None: none).
    total_steps: the run's last update, whose norm metrics are computed too
      (with the multiples of `train.log_every`, `eval_every` and
      `checkpoint_every`: the steps at which the loop reads the metrics).
  """
  method = weighting.get_method(config.weighting.name)
  mode = config.weighting.mode
  if mode not in ("param", "rep"):
    raise errors.ConfigError(f"weighting.mode must be 'param' or 'rep', got "
                             f"{mode!r}.")
  if mode == "rep" and not method.supports_rep_grad:
    raise errors.ConfigError(
        f"Weighting method {config.weighting.name!r} needs parameter "
        "gradients; use --config.weighting.mode=param.")
  terms = term_names(model, params, example_batch, spec.tasks, distill)
  return StepConfig(model, tx, spec.tasks, terms, method,
                    config.weighting, rep_grad=mode == "rep", distill=distill,
                    row_grads=_use_row_grads(config, tx, method, params),
                    compute_dtype=compute_dtype(config),
                    norm_periods=(config.train.log_every,
                                  config.train.get("eval_every", 0),
                                  config.train.get("checkpoint_every", 0)),
                    norm_last_step=total_steps)


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """`train.compute_dtype` as a dtype (None for float32, the default)."""
  name = config.train.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise errors.ConfigError(f"Unknown train.compute_dtype {name!r}; valid: "
                             f"{', '.join(COMPUTE_DTYPES)}.")
  return COMPUTE_DTYPES[name]


def cast_floats(tree, dtype):
  """Mixed precision: the float leaves of `tree` in `dtype` (None: as is).

  The train state keeps float32 master params and optimizer state; the
  forward and backward passes run on this cast copy, and the gradient of
  the cast brings the gradients back to float32.
  """
  if dtype is None:
    return tree
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      tree)


def _model_inputs(batch, dtype):
  """The batch with its dense features in the compute dtype."""
  if dtype is None or "dense" not in batch:
    return batch
  return {**batch, "dense": batch["dense"].astype(dtype)}


def _use_row_grads(config, tx, method, params) -> bool:
  """`train.embedding_grads` resolved, with the combinations that cannot
  work refused. "auto": rows iff the tables have a `SplitOptimizer` (a
  row-sparse one, or dense Adam fed by rows) and are 2-D."""
  choice = config.train.get("embedding_grads", "auto")
  if choice not in ("auto", "dense", "rows"):
    raise errors.ConfigError(f"train.embedding_grads must be 'auto', 'dense' "
                             f"or 'rows', got {choice!r}.")
  split_opt = isinstance(tx, row_optim.SplitOptimizer)
  # A row-sparse optimizer (not a dense one fed by rows) needs row gradients.
  sparse_opt = split_opt and not tx.rows.moves_all_rows
  if sparse_opt and choice == "dense":
    raise errors.ConfigError(
        "A row-sparse optimizer.embedding needs the table gradients as rows: "
        "set train.embedding_grads to 'rows' or 'auto'.")
  stacked = any(str(p[-1]).startswith(embedding.TABLE_PREFIXES) and x.ndim != 2
                for p, x in traverse_util.flatten_dict(params).items())
  if stacked and (choice == "rows" or sparse_opt):
    raise errors.ConfigError(
        "Row gradients need 2-D embedding tables; this model stacks them (e.g. "
        "DML peers under nn.vmap): use train.embedding_grads='dense' and "
        "optimizer.embedding='dense'.")
  if method.needs_split_gram and (choice == "rows" or sparse_opt):
    raise errors.ConfigError(
        f"Weighting method {config.weighting.name!r} differentiates two "
        "half-batches separately, with dense table gradients: it needs "
        "train.embedding_grads='dense' or 'auto' and optimizer.embedding="
        "'dense'.")
  if method.needs_split_gram:
    return False
  if sparse_opt and method.needs_full_grads:
    raise errors.ConfigError(
        f"Weighting method {config.weighting.name!r} works on the flat "
        "shared gradients (dense tables; DB-MTL's and MoCo's running averages "
        "move rows outside the batch): it needs optimizer.embedding='dense'.")
  if choice == "auto":
    return split_opt and not stacked
  return choice == "rows"


def init_weighting(step_cfg, weighting_config, params):
  """The weighting method's initial state for the step's terms."""
  method = step_cfg.method
  if method.needs_full_grads:
    shared = shared_params(params, step_cfg.model)
    size = sum(x.size for x in jax.tree.leaves(shared))
    layout = ({"param_layout": weighting_base.param_layout(shared)}
              if method.needs_param_layout else {})
    return method.init(step_cfg.terms, weighting_config, num_shared_params=size,
                       **layout)
  return method.init(step_cfg.terms, weighting_config)


def _local_terms(params, perturbations, batch, rng, denom, cfg: StepConfig,
                 targets=None, rows=None, with_gates=False):
  """float[T]: this device's shares of the global term means L'_t.

  `targets`: the teachers' outputs on `batch` (distill.terms.teacher_targets)
  when the step has distillation terms that read them.
  `rows`: the zero `LOOKUP_ROWS` perturbations (row-gradient path); then
  returns (terms, {table path: (ids of each lookup site, ...)}).
  `with_gates`: returns (terms or the pair above, the model's
  aux.mixture_gates), for `_rep_gram`.
  """
  dtype = cfg.compute_dtype  # mixed precision: a cast copy of the params
  variables = {"params": cast_floats(params, dtype)}
  if perturbations is not None:
    variables[PERTURBATIONS] = cast_floats(perturbations, dtype)
  inputs = _model_inputs(batch, dtype)
  if rows is not None:
    variables[embedding.LOOKUP_ROWS] = cast_floats(rows, dtype)
    (outputs, aux), lookups = cfg.model.apply(
        variables, inputs, train=True, rngs={"dropout": rng},
        mutable=[embedding.LOOKUP_IDS])
  else:
    outputs, aux = cfg.model.apply(variables, inputs, train=True,
                                   rngs={"dropout": rng})
  sums, _ = task_loss_sums(outputs, batch, cfg.tasks)
  per_example = dict(aux.aux_losses)
  if cfg.distill is not None:
    per_example.update(cfg.distill.per_example_terms(
        outputs, aux, params, batch, targets))
  for name, values in per_example.items():
    sums[name] = jnp.sum(batch["weights"] * values)
  terms = jnp.stack([sums[n] for n in cfg.terms]) / denom * cfg.fixed_weights
  if rows is not None:
    terms = terms, row_grads_lib.flatten_sites(
        lookups.get(embedding.LOOKUP_IDS, {}))
  if with_gates:
    return terms, aux.mixture_gates
  return terms


class _RowPath:
  """The row-gradient path of one per-device step: what it differentiates
  (the non-table params and the gathered rows) and how it reduces them."""

  def __init__(self, params, batch, rng, cfg: StepConfig):
    sites, self.zeros = row_grads_lib.lookup_shapes(cfg.model, params, batch, rng)
    self.tables, self.rest = row_grads_lib.split(params, tuple(sites))
    self.weights = batch["weights"]

  def compact(self, sites, row_grads, lead_ndim=0):
    """{table path: RowGrad}, global (summed over devices)."""
    return row_grads_lib.compact(sites, row_grads, self.tables, self.weights,
                                 AXIS, lead_ndim)

  def densify(self, row_grads):
    """{table path: RowGrad} -> {table path: dense gradient}."""
    return {p: row_grads_lib.densify(r, self.tables[p].shape[0])
            for p, r in row_grads.items()}


def _terms_fn(rows: Optional[_RowPath], batch, rng, denom, cfg, targets,
              with_gates=False):
  """f(*primals, z=None) -> (local terms, lookup sites or None), and the
  primals: (params,) on the dense path; (non-table params, zero rows) on
  the row path (cotangent [0] is always the params part). `with_gates`:
  the aux is (lookup sites or None, the model's mixture gates or None)."""
  def dense(params, z=None):
    out = _local_terms(params, z, batch, rng, denom, cfg, targets,
                       with_gates=with_gates)
    return (out[0], (None, out[1])) if with_gates else (out, None)

  if rows is None:
    return dense, None

  def fn(rest, row_zeros, z=None):
    out = _local_terms(row_grads_lib.merge(rows.tables, rest), z, batch, rng,
                       denom, cfg, targets, rows=row_zeros,
                       with_gates=with_gates)
    if with_gates:
      (terms, sites), gates = out
      return terms, (sites, gates)
    return out
  return fn, (rows.rest, rows.zeros)


def _per_term_grads(params, batch, rng, denom, cfg: StepConfig, targets,
                    rows: Optional[_RowPath] = None):
  """(local terms float[T], global per-term grads [T, ...], row ids).

  Dense path: the grads are a params tree, row ids None. Row path: the
  tables' leaves are compact [T, U, d] and row ids {table path: int32[U]}.

  One forward pass; the T backward passes are `vmap` of the VJP over the
  one-hot cotangents on the dense path, and T unbatched VJPs (a Python
  loop, stacked) on the row path: on XLA:CPU the batched backward's
  [T, ...] matrix products ran ~20% slower than T plain ones (MMoE, T=2;
  docs/benchmarks/README.md). Both are exact; the dense path keeps `vmap`
  so that its results stay bit-for-bit those of earlier runs.
  """
  if cfg.row_grads and rows is None:
    rows = _RowPath(params, batch, rng, cfg)
  fn, primals = _terms_fn(rows, batch, rng, denom, cfg, targets)
  local, vjp_fn, sites = jax.vjp(fn, *(primals or (params,)), has_aux=True)
  eye = jnp.eye(len(cfg.terms), dtype=local.dtype)
  if rows is None:
    per_term = jax.vmap(vjp_fn)(eye)
  else:
    per_term = jax.tree.map(lambda *g: jnp.stack(g),
                            *[vjp_fn(ct) for ct in eye])
  grads = collectives.psum(per_term[0], AXIS)
  if rows is None:
    return local, grads, None
  compact = rows.compact(sites, per_term[1], lead_ndim=1)
  grads = row_grads_lib.merge({p: r.grads for p, r in compact.items()}, grads)
  return local, grads, {p: r.ids for p, r in compact.items()}


def _split_per_term_grads(params, batch, rng, denom, cfg: StepConfig,
                          targets):
  """`_per_term_grads` (dense path) and the cross Gram matrix of two halves.

  The global batch is split by the parity of each example's global index
  (the same halves on any number of devices); one forward pass per half
  and one vmapped VJP over the 2T terms give each half's share of every
  global term mean. Their sum is the full-batch per-term gradient; the
  cross Gram matrix is that of the halves' own mean gradients.
  Returns (local terms float[T], global per-term grads, cross float[T, T]).
  """
  weights = batch["weights"]
  index = lax.axis_index(AXIS) * weights.shape[0] + jnp.arange(weights.shape[0])
  halves = [jnp.where(index % 2 == k, weights, 0.0) for k in (0, 1)]

  def terms(p):
    return jnp.concatenate([
        _local_terms(p, None, {**batch, "weights": w}, rng, denom, cfg, targets)
        for w in halves])

  local2, vjp_fn = jax.vjp(terms, params)
  num = len(cfg.terms)
  per_half = collectives.psum(
      jax.vmap(vjp_fn)(jnp.eye(2 * num, dtype=local2.dtype))[0], AXIS)
  first = jax.tree.map(lambda x: x[:num], per_half)
  second = jax.tree.map(lambda x: x[num:], per_half)
  sizes = [jnp.maximum(collectives.psum(jnp.sum(w), AXIS), 1.0) for w in halves]
  cross = gram_matrix(_shared_only(first, cfg), num, _shared_only(second, cfg))
  cross = cross * (denom / sizes[0]) * (denom / sizes[1])
  per_term = jax.tree.map(jnp.add, first, second)
  return local2[:num] + local2[num:], per_term, cross


def _teacher_targets(teacher_params, batch, cfg: StepConfig):
  """What the extra terms read (the teachers' outputs), or None."""
  if cfg.distill is None:
    return None
  return cfg.distill.step_targets(batch, teacher_params)


def _zero_perturbations(params, batch, cfg: StepConfig):
  shapes = jax.eval_shape(
      lambda p: cfg.model.apply({"params": p}, batch, train=False,
                                mutable=[PERTURBATIONS])[1], params)
  if PERTURBATIONS not in shapes:
    raise ValueError(f"Model {type(cfg.model).__name__} exposes no shared "
                     "representation (self.perturb('shared', h)); use "
                     "weighting.mode='param'.")
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[PERTURBATIONS])


def _rep_gram(vjp_fn, perturbations, gates, num_terms: int, dtype,
              distilled: bool, slot_per_term: bool):
  """This device's Gram matrix of the per-term gradients w.r.t. the shared
  representation (the `"shared"` perturbation).

  Where the model mixes that representation E [B, E, H] only through
  `layers.mix_experts` and exposes the mixture (perturbation
  `layers.MIXTURE_SITE`, gates aux.mixture_gates = A [B, T, E]),
  term s's gradient w.r.t. E is R_s[b] = A[b]^T C_s[b], C_s = dL_s/d(mixture)
  [B, T, H], so <R_s, R_r> = sum_b sum_{t,u} (A A^T)[b, t, u]
  <C_s[b, t], C_r[b, u]>: computed from the mixture gradients (the towers'
  backward only), without forming the [T, B, E, H] ones (MMoE of
  BENCHMARK.md at T = 4: 16 MB written and read again for their Gram, ~5 ms
  of a 50 ms step). When the terms are the tasks, in the mixture's slot
  order (`slot_per_term`; such a model's slot t feeds task t's tower
  alone), C_s is nonzero in slot s only: one VJP of the summed terms gives
  every c_s = C_s[:, s] and G_sr = sum_b (A A^T)[b, s, r] <c_s[b], c_r[b]>
  (no T-fold vmap of the towers' backward). Otherwise the Gram of the
  materialised gradients.
  """
  eye = jnp.eye(num_terms, dtype=dtype)
  if (gates is not None and layers.MIXTURE_SITE in perturbations
      and not distilled):  # a hint or logit term may read E itself
    gates = gates.astype(jnp.float32)
    metric = jnp.einsum("bte,bue->btu", gates, gates,
                        precision=lax.Precision.HIGHEST)  # [B, T, T]
    num_mixed = metric.shape[1]
    if slot_per_term and num_mixed == num_terms:
      slots = vjp_fn(jnp.ones((num_terms,), dtype))[-1][layers.MIXTURE_SITE]
      slots = slots.astype(jnp.float32)  # [B, T, H]: c_t = C_t[:, t]
      inner = jnp.einsum("bth,buh->btu", slots, slots,
                         precision=lax.Precision.HIGHEST)
      return jnp.sum(metric * inner, axis=0)
    mix_grads = jax.vmap(lambda ct: vjp_fn(ct)[-1][layers.MIXTURE_SITE])(eye)
    mix_grads = mix_grads.astype(jnp.float32)  # [S, B, T, H]
    # N_s[b, u] = sum_t metric[b, t, u] C_s[b, t]: a sum of T products.
    weighted = sum(metric[None, :, t, :, None] * mix_grads[:, :, t, None, :]
                   for t in range(num_mixed))
    return gram_matrix({"l": weighted}, num_terms, {"r": mix_grads})
  rep_grads = jax.vmap(lambda ct: vjp_fn(ct)[-1])(eye)  # towers only (DCE)
  rep_grads = {k: v for k, v in rep_grads.items() if k != layers.MIXTURE_SITE}
  return gram_matrix(rep_grads, num_terms)


def gram_matrix(per_term, num_terms: int, other=None) -> jax.Array:
  """G_ij = <g_i, g_j> over every leaf of a pytree of [T, ...] arrays.

  A model with no shared parameters (e.g. single-task) gives zeros.
  """
  gram = jnp.zeros((num_terms, num_terms), jnp.float32)
  others = jax.tree.leaves(per_term if other is None else other)
  for x, y in zip(jax.tree.leaves(per_term), others):
    # One [T, N] x [N, T] matrix product per leaf: XLA:CPU runs the
    # multi-axis einsum "i...,j...->ij" several times slower (13 vs 2.6 ms
    # on a [4, 1024, 8, 128] representation gradient).
    flat = x.reshape(num_terms, -1).astype(jnp.float32)
    flat_y = flat if y is x else y.reshape(num_terms, -1).astype(jnp.float32)
    gram = gram + jnp.dot(flat, flat_y.T, precision=lax.Precision.HIGHEST)
  return gram


def _combine(per_term_grads, combination, cfg: StepConfig):
  """Shared leaves: sum_t c_t g_t (or `direction`); specific: sum_t s_t g_t."""
  coeffs = combination.coeffs
  specific_coeffs = coeffs if cfg.method.scales_specific else jnp.ones_like(coeffs)

  def mix(path, g):
    c = specific_coeffs if is_task_specific(path, cfg.model) else coeffs
    return jnp.tensordot(c, g, axes=1)

  grads = jax.tree_util.tree_map_with_path(mix, per_term_grads)
  if combination.direction is not None:
    shared = _shared_only(grads, cfg)
    _, unravel = ravel_pytree(shared)
    direction = unravel(combination.direction)
    grads = jax.tree_util.tree_map_with_path(
        lambda p, g: g if is_task_specific(p, cfg.model) else _get(direction, p),
        grads)
  return grads


def shared_params(tree, model: nn.Module):
  """`tree` with task-specific leaves replaced by None (an empty subtree)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: None if is_task_specific(p, model) else x, tree)


def _shared_only(tree, cfg):
  return shared_params(tree, cfg.model)


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def _get_path(tree, path):
  """The leaf at a path of str keys."""
  for k in path:
    tree = tree[k]
  return tree


def _norm_metrics_now(update, cfg: StepConfig):
  """True, or a traced bool: whether update number `update` (1 = the
  first) computes the norm metrics."""
  if 1 in cfg.norm_periods:
    return True
  now = update == cfg.norm_last_step if cfg.norm_last_step else False
  for period in cfg.norm_periods:
    now = jnp.logical_or(now, update % period == 0)
  return now


def train_step(state: state_lib.TrainState, batch: Mapping[str, jax.Array],
               teacher_params=None, *, cfg: StepConfig):
  """One optimizer update on the global batch; per-device code.

  `teacher_params`: a tuple of frozen teacher params (online distillation),
  an argument of the compiled step, never part of the state.

  Returns:
    (new_state, metrics): global scalars "loss" (sum_t L'_t, the fixed-
    weight total), "loss/<term>" (each term's global mean, before its fixed
    weight), "grad_norm", "param_norm" (NaN on the updates that
    `cfg.norm_periods` / `cfg.norm_last_step` leave out), "num_examples",
    and the weighting method's diagnostics (e.g. "weight/<term>").
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
  method_rng = jax.random.fold_in(step_rng, 0x5EED)  # same on every device
  denom = jnp.maximum(collectives.psum(jnp.sum(batch["weights"]), AXIS), 1.0)
  num_terms = len(cfg.terms)
  method = cfg.method
  targets = _teacher_targets(teacher_params, batch, cfg)

  def update_weighting(global_terms, task_grads):
    return method.update(global_terms, task_grads, state.weighting_state,
                         step=state.step, rng=method_rng,
                         params=cfg.method_params)

  # Row path: {table path: RowGrad} of the combined gradient; `grads` then
  # holds the other params (None at the tables).
  rows = _RowPath(state.params, batch, dropout_rng, cfg) if cfg.row_grads else None
  row_grads = None
  if not method.needs_grads:
    fn, primals = _terms_fn(rows, batch, dropout_rng, denom, cfg, targets)
    primals = primals or (state.params,)

    def objective(*xs):
      local, sites = fn(*xs)
      global_terms = collectives.psum(lax.stop_gradient(local), AXIS)
      combination, wstate, diag = update_weighting(global_terms, None)
      coeffs = lax.stop_gradient(combination.coeffs)
      return jnp.dot(coeffs, local), (global_terms, wstate, diag, sites)

    grads, (global_terms, wstate, diag, sites) = jax.grad(
        objective, argnums=tuple(range(len(primals))), has_aux=True)(*primals)
    if rows is not None:
      row_grads = rows.compact(sites, grads[1])
    grads = collectives.psum(grads[0], AXIS)
  elif cfg.rep_grad:
    perturbations = _zero_perturbations(state.params, batch, cfg)
    fn, primals = _terms_fn(rows, batch, dropout_rng, denom, cfg, targets,
                            with_gates=True)
    primals = primals or (state.params,)
    local, vjp_fn, (sites, gates) = jax.vjp(
        lambda *xs: fn(*xs[:-1], z=xs[-1]), *primals, perturbations,
        has_aux=True)
    global_terms = collectives.psum(local, AXIS)
    gram = collectives.psum(
        _rep_gram(vjp_fn, perturbations, gates, num_terms, local.dtype,
                  cfg.distill is not None,
                  cfg.terms == tuple(t.name for t in cfg.tasks)), AXIS)
    combination, wstate, diag = update_weighting(
        global_terms, weighting_base.TaskGrads(gram))
    coeffs = lax.stop_gradient(combination.coeffs)
    all_grads = vjp_fn(coeffs)
    grads = all_grads[0]
    if not method.scales_specific:  # task-specific params: unweighted sum;
      unweighted = vjp_fn(jnp.ones_like(coeffs))[0]  # its shared part is DCE'd
      grads = jax.tree_util.tree_map_with_path(
          lambda p, g, u: u if is_task_specific(p, cfg.model) else g,
          grads, unweighted)
    if rows is not None:  # tables are shared: the weighted rows
      row_grads = rows.compact(sites, all_grads[1])
    grads = collectives.psum(grads, AXIS)
  else:
    cross = None
    if method.needs_split_gram:
      local, per_term, cross = _split_per_term_grads(
          state.params, batch, dropout_rng, denom, cfg, targets)
      row_ids = None
    else:
      local, per_term, row_ids = _per_term_grads(
          state.params, batch, dropout_rng, denom, cfg, targets, rows)
    if row_ids is not None and method.needs_full_grads:  # flat: dense layout
      per_term = row_grads_lib.merge(rows.densify({
          p: row_grads_lib.RowGrad(ids, _get_path(per_term, p))
          for p, ids in row_ids.items()}), per_term)
      row_ids = None
    global_terms = collectives.psum(local, AXIS)
    shared = _shared_only(per_term, cfg)
    flat = None
    if method.needs_full_grads:
      flat = jax.vmap(lambda g: ravel_pytree(g)[0])(shared)
    combination, wstate, diag = update_weighting(
        global_terms, weighting_base.TaskGrads(gram_matrix(shared, num_terms),
                                               flat, cross))
    combination = jax.tree.map(lax.stop_gradient, combination)
    grads = _combine(per_term, combination, cfg)
    if row_ids is not None:
      tables, grads = row_grads_lib.split(grads, tuple(row_ids))
      row_grads = {p: row_grads_lib.RowGrad(ids, tables[p])
                   for p, ids in row_ids.items()}

  with_norms = _norm_metrics_now(state.step + 1, cfg)
  if isinstance(cfg.tx, row_optim.SplitOptimizer):
    if row_grads is None:
      if not cfg.tx.rows.moves_all_rows:
        raise ValueError("A row-sparse embedding optimizer needs the row path "
                         "(StepConfig.row_grads) and a method without a flat "
                         "gradient direction.")
      tables, grads = row_grads_lib.split(
          grads, row_optim.table_paths(state.params))
      row_grads = {p: row_grads_lib.all_rows(g) for p, g in tables.items()}
    params, opt_state, norms = cfg.tx.apply(state.params, state.opt_state,
                                            grads, row_grads, with_norms)
  else:
    if row_grads is not None:  # dense optimizer: the dense table gradients
      grads = row_grads_lib.merge(rows.densify(row_grads), grads)
    updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    norms = {"grad_norm": row_optim.when(
                 with_norms, lambda: optax.tree.norm(grads)),
             "param_norm": row_optim.when(
                 with_norms, lambda: optax.tree.norm(params))}
  metrics = {"loss": jnp.sum(global_terms), **norms, "num_examples": denom}
  raw = global_terms / cfg.fixed_weights
  metrics.update({f"loss/{n}": raw[i] for i, n in enumerate(cfg.terms)})
  metrics.update(diag)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, weighting_state=wstate)
  return new_state, metrics


def gradient_diagnostics(state: state_lib.TrainState, batch,
                         teacher_params=None, *,
                         cfg: StepConfig) -> Dict[str, jax.Array]:
  """Per-term gradient norms and pairwise cosines on the shared parameters.

  Run every N steps for any method (it costs T backward passes):
  "grad_norm/<term>" and "grad_cos/<a>/<b>" (negative = conflict).
  """
  denom = jnp.maximum(collectives.psum(jnp.sum(batch["weights"]), AXIS), 1.0)
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                           lax.axis_index(AXIS))
  targets = _teacher_targets(teacher_params, batch, cfg)
  _, per_term, _ = _per_term_grads(state.params, batch, rng, denom, cfg,
                                   targets)
  gram = gram_matrix(_shared_only(per_term, cfg), len(cfg.terms))
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  out = {f"grad_norm/{n}": norms[i] for i, n in enumerate(cfg.terms)}
  for i, a in enumerate(cfg.terms):
    for j in range(i + 1, len(cfg.terms)):
      out[f"grad_cos/{a}/{cfg.terms[j]}"] = gram[i, j] / jnp.maximum(
          norms[i] * norms[j], 1e-12)
  return out


def eval_step(params, batch: Mapping[str, jax.Array], *, model: nn.Module,
              compute_dtype=None) -> Dict[str, jax.Array]:
  """Per-example outputs for this device's shard (no collectives needed).

  Returns:
    {"outputs/<task>": float[b], "gates": float[b, T, E] if the model has
    gates, "cvr_logits": float[b] for ESMM}; padding rows are dropped on the
    host by their weight.
  """
  outputs, aux = model.apply({"params": cast_floats(params, compute_dtype)},
                             _model_inputs(batch, compute_dtype), train=False)
  outputs = cast_floats(outputs, jnp.float32 if compute_dtype else None)
  aux = cast_floats(aux, jnp.float32 if compute_dtype else None)
  result = {f"outputs/{name}": value for name, value in outputs.items()}
  for key in ("gates", "cvr_logits"):
    if getattr(aux, key) is not None:
      result[key] = getattr(aux, key)
  return result
