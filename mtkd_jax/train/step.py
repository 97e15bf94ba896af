"""Per-device train and eval steps (pmap-style), pure and jit-compiled once.

The functions here run on one device's shard of the global batch and use
explicit collectives over the `data` axis; `parallel.py` runs them under
`jax.jit` + `shard_map` on a device mesh or under `jax.pmap`.

`train_step` = loss terms -> gradient strategy -> optimizer update ->
metrics.

Loss terms. The model's tasks (and any auxiliary losses a model returns in
`aux.aux_losses`, e.g. AITM's calibrator) are named terms
L'_t = w_t * L_t, where w_t is the term's fixed weight (the task spec's) and
L_t the global weighted mean of its per-example loss. A weighting method
(`mtkd_jax.weighting`) turns them into coefficients c_t; the update follows
  g = sum_t c_t grad(L'_t)   on shared parameters,
and sum_t s_t grad(L'_t) on task-specific ones (s_t = c_t for loss weighting,
1 for gradient surgery). Fixed weights with the `ew` method give the plain
total sum_t w_t L_t.

Gradients (`gradients.py`). Each device differentiates its LOCAL share of
every global mean, sum_{i in shard} w_i l_i / sum_{all i} w_i, and the
shares are summed (`psum`) across devices; this is exact with padding and
equals the single-device full-batch gradient. Methods that need per-term
gradients see their inner products (Gram matrix) only after the
cross-device sum, so the update is the same on 1 device and on 8.

Row gradients (`StepConfig.row_grads`, `train.embedding_grads="rows"`):
the step differentiates w.r.t. the rows the embedding lookups gather
instead of the tables (`row_grads.objective`); the table leaves of the
gradient are then one compact, exact [U, d] gradient per table, which the
optimizer takes as rows or densifies.
"""
import functools
from typing import Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtkd_jax import errors
from mtkd_jax import losses as losses_lib
from mtkd_jax import weighting
from mtkd_jax.accel import row_grads as row_grads_lib
from mtkd_jax.accel import switch as accel
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.distill import plugin as distill_plugin
from mtkd_jax.models import base as model_base
from mtkd_jax.train import collectives
from mtkd_jax.train import gradients
from mtkd_jax.train import state as state_lib
from mtkd_jax.weighting import base as weighting_base
from mtkd_jax.weighting import gram as gram_lib

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


class StepConfig:
  """Static pieces of the step (bound with functools.partial).

  Attributes beyond the arguments: `strategy` ((objective, weigh) ->
  gradients.Update, the weighting mode's gradient strategy),
  `apply_updates` ((params, opt_state, grads, row ids) -> (params,
  opt_state, grad_norm), the optimizer's, `accel.optimizer_update`),
  `fixed_weights` (float32[T], each term's fixed weight).
  `accel`: whether the step may run native CPU kernels (`train.accel`).
  """

  def __init__(self, model: nn.Module, tx, tasks: Sequence[specs_lib.TaskSpec],
               terms: Sequence[str], method: weighting_base.WeightingMethod,
               rep_grad: bool = False, distill=None,
               row_grads: bool = False, compute_dtype=None,
               accel_on: bool = False):
    self.model, self.tx, self.tasks, self.terms = model, tx, tuple(tasks), tuple(terms)
    self.method, self.rep_grad = method, rep_grad
    self.accel = accel_on
    self.apply_updates, needs_rows = accel.optimizer_update(tx)
    # Table gradients as rows (row_grads.py); a row-sparse optimizer needs them.
    self.row_grads = row_grads or needs_rows
    self.distill = distill  # extra terms (distill_plugin.Distillation.spec)
    self.compute_dtype = compute_dtype  # None: the params' own (float32)
    fixed = ({t.name: t.weight for t in tasks} if distill is None
             else distill.fixed_weights(tasks))
    self.fixed_weights = jnp.asarray([fixed.get(n, 1.0) for n in self.terms],
                                     jnp.float32)
    self.strategy = _strategy(self)


def _strategy(cfg: StepConfig):
  """The gradient strategy of the config's method and mode."""
  method = cfg.method
  if not method.needs_grads:
    return gradients.loss_level
  specific = functools.partial(is_task_specific, model=cfg.model)
  if cfg.rep_grad:
    return functools.partial(
        gradients.rep_grad,
        rep_gram=getattr(cfg.model, "rep_gram", gram_lib.representation_gram),
        is_specific=specific, scales_specific=method.scales_specific,
        exclusive=cfg.distill is None,
        slot_per_term=cfg.terms == tuple(t.name for t in cfg.tasks))
  return functools.partial(
      gradients.split_per_term if method.needs_split_gram else gradients.per_term,
      is_specific=specific, scales_specific=method.scales_specific,
      needs_full_grads=method.needs_full_grads)


def make_step_config(config, model, tx, spec, params, example_batch,
                     distill=None):
  """The step's static pieces: terms, weighting method, gradient mode.

  Args:
    distill: the extra terms, `distill_plugin.Distillation.spec` (None: none).
  """
  method = weighting.from_config(config.weighting)
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
                    rep_grad=mode == "rep", distill=distill,
                    row_grads=accel.use_row_grads(config, tx, method, params),
                    compute_dtype=compute_dtype(config),
                    accel_on=accel.enabled(config))


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


def init_weighting(step_cfg, params):
  """The weighting method's initial state for the step's terms."""
  method = step_cfg.method
  if method.needs_full_grads:
    shared = shared_params(params, step_cfg.model)
    size = sum(x.size for x in jax.tree.leaves(shared))
    layout = ({"param_layout": weighting_base.param_layout(shared)}
              if method.needs_param_layout else {})
    return method.init(step_cfg.terms, num_shared_params=size, **layout)
  return method.init(step_cfg.terms)


def _local_terms(params, collections, mutable, batch, rng, denom,
                 cfg: StepConfig, targets=None):
  """This device's shares of the global term means L'_t.

  Args:
    params: the params (the float32 master copy).
    collections: extra variable collections for `apply` (perturbations,
      gathered rows), {} for none.
    mutable: the collections the forward may write (a tuple).
    targets: the teachers' outputs on `batch` (`_teacher_targets`) when the
      step has distillation terms that read them.
  Returns:
    (float[T], gradients.TermsAux(the model's aux, the written collections)).
  """
  dtype = cfg.compute_dtype  # mixed precision: a cast copy of the params
  variables = {"params": cast_floats(params, dtype),
               **cast_floats(collections, dtype)}
  inputs = _model_inputs(batch, dtype)
  out = cfg.model.apply(variables, inputs, train=True, rngs={"dropout": rng},
                        mutable=list(mutable) if mutable else False)
  (outputs, aux), mutated = out if mutable else (out, {})
  sums, _ = task_loss_sums(outputs, batch, cfg.tasks)
  per_example = dict(aux.aux_losses)
  if cfg.distill is not None:
    per_example.update(cfg.distill.per_example_terms(
        outputs, aux, params, batch, targets))
  for name, values in per_example.items():
    sums[name] = jnp.sum(batch["weights"] * values)
  terms = jnp.stack([sums[n] for n in cfg.terms]) / denom * cfg.fixed_weights
  return terms, gradients.TermsAux(aux, dict(mutated))


def make_objective(params, batch, rng, denom, cfg: StepConfig,
                   targets=None, split: bool = False) -> gradients.Objective:
  """What the step differentiates: the params (dense path) or, with
  `cfg.row_grads`, the non-table params and the gathered rows
  (`row_grads.objective`); with `split`, the two half-batches' terms of
  double-sampling methods (`_split_objective`)."""
  if split:
    return _split_objective(params, batch, rng, denom, cfg, targets)
  local = functools.partial(_local_terms, batch=batch, rng=rng, denom=denom,
                            cfg=cfg, targets=targets)

  def perturbations():
    return _zero_perturbations(params, batch, cfg)

  if cfg.row_grads:
    return row_grads_lib.objective(local, params, batch, rng, cfg.model,
                                   perturbations, AXIS)

  def terms(primals, pert):
    return local(primals[0], {} if pert is None else {PERTURBATIONS: pert}, ())

  def reduce(cot, aux, lead_ndim):
    del aux, lead_ndim
    return collectives.psum(cot[0], AXIS), None
  return gradients.Objective(terms, (params, {}), reduce, perturbations)


def _split_objective(params, batch, rng, denom, cfg: StepConfig,
                     targets=None) -> gradients.Objective:
  """The dense objective of double-sampling methods: float[2T], each half-
  batch's share of every global term mean (`gradients.split_per_term`).

  The global batch is split by the parity of each example's global index
  (the same halves on any number of devices); `pair_scale` turns the halves'
  shares into their own means for the cross Gram matrix.
  """
  weights = batch["weights"]
  index = lax.axis_index(AXIS) * weights.shape[0] + jnp.arange(weights.shape[0])
  halves = [jnp.where(index % 2 == k, weights, 0.0) for k in (0, 1)]

  def terms(primals, pert):
    del pert  # parameter mode only
    out = [_local_terms(primals[0], {}, (), {**batch, "weights": w}, rng,
                        denom, cfg, targets) for w in halves]
    return jnp.concatenate([o[0] for o in out]), out[0][1]

  def reduce(cot, aux, lead_ndim):
    del aux, lead_ndim
    return collectives.psum(cot[0], AXIS), None
  sizes = [jnp.maximum(collectives.psum(jnp.sum(w), AXIS), 1.0) for w in halves]
  return gradients.Objective(terms, (params, {}), reduce, None,
                             pair_scale=(denom / sizes[0], denom / sizes[1]))


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


def shared_params(tree, model: nn.Module):
  """`tree` with task-specific leaves replaced by None (an empty subtree)."""
  return gradients.shared_only(tree, lambda p: is_task_specific(p, model))


def param_norm(params) -> Dict[str, jax.Array]:
  """{"param_norm": the global norm of the params}: the loop computes it
  on the steps whose metrics it reads."""
  return {"param_norm": optax.tree.norm(params)}


def train_step(state: state_lib.TrainState, batch: Mapping[str, jax.Array],
               teacher_params=None, *, cfg: StepConfig):
  """One optimizer update on the global batch; per-device code.

  `teacher_params`: a tuple of frozen teacher params (online distillation),
  an argument of the compiled step, never part of the state.

  Returns:
    (new_state, metrics): global scalars "loss" (sum_t L'_t, the fixed-
    weight total), "loss/<term>" (each term's global mean, before its fixed
    weight), "grad_norm" (of the combined gradient, before clipping),
    "num_examples", and the weighting method's diagnostics (e.g.
    "weight/<term>").
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
  denom = jnp.maximum(collectives.psum(jnp.sum(batch["weights"]), AXIS), 1.0)
  targets = _teacher_targets(teacher_params, batch, cfg)
  objective = make_objective(state.params, batch, dropout_rng, denom, cfg,
                             targets, split=cfg.method.needs_split_gram)

  def weigh(global_terms, task_grads):
    return cfg.method.update(global_terms, task_grads, state.weighting_state,
                             step=state.step,
                             rng=jax.random.fold_in(step_rng, 0x5EED))

  with accel.kernels(cfg.accel):
    update = cfg.strategy(objective, weigh)
    params, opt_state, grad_norm = cfg.apply_updates(
        state.params, state.opt_state, update.grads, update.row_ids)
  raw = update.terms / cfg.fixed_weights
  metrics = {"loss": jnp.sum(update.terms), "grad_norm": grad_norm,
             "num_examples": denom,
             **{f"loss/{n}": raw[i] for i, n in enumerate(cfg.terms)},
             **update.diagnostics}
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state,
                            weighting_state=update.weighting_state)
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
  with accel.kernels(cfg.accel):
    per_term = gradients.per_term_grads(
        make_objective(state.params, batch, rng, denom, cfg, targets)).grads
  gram = gram_lib.gram_matrix(shared_params(per_term, cfg.model),
                              len(cfg.terms))
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  out = {f"grad_norm/{n}": norms[i] for i, n in enumerate(cfg.terms)}
  for i, a in enumerate(cfg.terms):
    for j in range(i + 1, len(cfg.terms)):
      out[f"grad_cos/{a}/{cfg.terms[j]}"] = gram[i, j] / jnp.maximum(
          norms[i] * norms[j], 1e-12)
  return out


def eval_step(params, batch: Mapping[str, jax.Array], *, model: nn.Module,
              compute_dtype=None, accel_on: bool = False
              ) -> Dict[str, jax.Array]:
  """Per-example outputs for this device's shard (no collectives needed).

  Returns:
    {"outputs/<task>": float[b], "gates": float[b, T, E] if the model has
    gates, "cvr_logits": float[b] for ESMM}; padding rows are dropped on the
    host by their weight.
  """
  with accel.kernels(accel_on):
    outputs, aux = model.apply({"params": cast_floats(params, compute_dtype)},
                               _model_inputs(batch, compute_dtype), train=False)
  outputs = cast_floats(outputs, jnp.float32 if compute_dtype else None)
  aux = cast_floats(aux, jnp.float32 if compute_dtype else None)
  result = {f"outputs/{name}": value for name, value in outputs.items()}
  for key in ("gates", "cvr_logits"):
    if getattr(aux, key) is not None:
      result[key] = getattr(aux, key)
  return result
