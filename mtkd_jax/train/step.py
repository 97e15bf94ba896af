"""Per-device train and eval steps (pmap-style), pure and jit-compiled once.

The functions here run on one device's shard of the global batch and use
explicit collectives over the `data` axis; `parallel.py` runs them under
`jax.jit` + `shard_map` on a device mesh or under `jax.pmap`.

Loss terms. The model's tasks (and any auxiliary losses a model returns in
`aux["aux_losses"]`, e.g. AITM's calibrator) are named terms
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
"""
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from mtkd_jax import errors
from mtkd_jax import losses as losses_lib
from mtkd_jax import weighting
from mtkd_jax.data import specs as specs_lib
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
               tasks: Sequence[specs_lib.TaskSpec]) -> Tuple[str, ...]:
  """The step's loss terms: the tasks, then the model's `aux_losses` names."""
  _, aux = jax.eval_shape(
      lambda p: model.apply({"params": p}, batch, train=False), params)
  return tuple(t.name for t in tasks) + tuple(sorted(aux.get("aux_losses", {})))


def is_task_specific(path, model: nn.Module) -> bool:
  """Whether a parameter belongs to one task only (e.g. under "towers").

  Models name their task-specific top-level submodules in a class attribute
  `task_specific_params` (default: ("towers",)).
  """
  prefixes = getattr(model, "task_specific_params", ("towers",))
  top = path[0].key if hasattr(path[0], "key") else str(path[0])
  return top in prefixes


class StepConfig:
  """Static pieces of the step (bound with functools.partial)."""

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation,
               tasks: Sequence[specs_lib.TaskSpec], terms: Sequence[str],
               method: weighting_base.WeightingMethod, method_params=None,
               rep_grad: bool = False):
    self.model, self.tx, self.tasks, self.terms = model, tx, tuple(tasks), tuple(terms)
    fixed = {t.name: t.weight for t in tasks}
    self.fixed_weights = jnp.asarray([fixed.get(n, 1.0) for n in self.terms],
                                     jnp.float32)
    self.method, self.method_params, self.rep_grad = method, method_params, rep_grad


def make_step_config(config, model, tx, spec, params, example_batch):
  """The step's static pieces: terms, weighting method, gradient mode."""
  method = weighting.get_method(config.weighting.name)
  mode = config.weighting.mode
  if mode not in ("param", "rep"):
    raise errors.ConfigError(f"weighting.mode must be 'param' or 'rep', got "
                             f"{mode!r}.")
  if mode == "rep" and not method.supports_rep_grad:
    raise errors.ConfigError(
        f"Weighting method {config.weighting.name!r} needs parameter "
        "gradients; use --config.weighting.mode=param.")
  terms = term_names(model, params, example_batch, spec.tasks)
  return StepConfig(model, tx, spec.tasks, terms, method,
                             config.weighting, rep_grad=mode == "rep")


def init_weighting(step_cfg, weighting_config, params):
  """The weighting method's initial state for the step's terms."""
  method = step_cfg.method
  if method.needs_full_grads:
    shared = shared_params(params, step_cfg.model)
    size = sum(x.size for x in jax.tree.leaves(shared))
    return method.init(step_cfg.terms, weighting_config, num_shared_params=size)
  return method.init(step_cfg.terms, weighting_config)


def _local_terms(params, perturbations, batch, rng, denom, cfg: StepConfig):
  """float[T]: this device's shares of the global term means L'_t."""
  variables = {"params": params}
  if perturbations is not None:
    variables[PERTURBATIONS] = perturbations
  outputs, aux = cfg.model.apply(variables, batch, train=True,
                                 rngs={"dropout": rng})
  sums, _ = task_loss_sums(outputs, batch, cfg.tasks)
  for name, values in aux.get("aux_losses", {}).items():
    sums[name] = jnp.sum(batch["weights"] * values)
  return jnp.stack([sums[n] for n in cfg.terms]) / denom * cfg.fixed_weights


def _zero_perturbations(params, batch, cfg: StepConfig):
  shapes = jax.eval_shape(
      lambda p: cfg.model.apply({"params": p}, batch, train=False,
                                mutable=[PERTURBATIONS])[1], params)
  if PERTURBATIONS not in shapes:
    raise ValueError(f"Model {type(cfg.model).__name__} exposes no shared "
                     "representation (self.perturb('shared', h)); use "
                     "weighting.mode='param'.")
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[PERTURBATIONS])


def gram_matrix(per_term, num_terms: int) -> jax.Array:
  """G_ij = <g_i, g_j> over every leaf of a pytree of [T, ...] arrays.

  A model with no shared parameters (e.g. single-task) gives zeros.
  """
  gram = jnp.zeros((num_terms, num_terms), jnp.float32)
  for x in jax.tree.leaves(per_term):
    gram = gram + jnp.einsum("i...,j...->ij", x, x)
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


def train_step(state: state_lib.TrainState, batch: Mapping[str, jax.Array], *,
               cfg: StepConfig):
  """One optimizer update on the global batch; per-device code.

  Returns:
    (new_state, metrics): global scalars "loss" (sum_t L'_t, the fixed-
    weight total), "loss/<term>" (each term's global mean, before its fixed
    weight), "grad_norm", "param_norm", "num_examples", and the weighting
    method's diagnostics (e.g. "weight/<term>").
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
  method_rng = jax.random.fold_in(step_rng, 0x5EED)  # same on every device
  denom = jnp.maximum(lax.psum(jnp.sum(batch["weights"]), AXIS), 1.0)
  num_terms = len(cfg.terms)
  method = cfg.method

  def update_weighting(global_terms, task_grads):
    return method.update(global_terms, task_grads, state.weighting_state,
                         step=state.step, rng=method_rng,
                         params=cfg.method_params)

  if not method.needs_grads:
    def objective(params):
      local = _local_terms(params, None, batch, dropout_rng, denom, cfg)
      global_terms = lax.psum(lax.stop_gradient(local), AXIS)
      combination, wstate, diag = update_weighting(global_terms, None)
      coeffs = lax.stop_gradient(combination.coeffs)
      return jnp.dot(coeffs, local), (global_terms, wstate, diag)

    grads, (global_terms, wstate, diag) = jax.grad(objective, has_aux=True)(
        state.params)
    grads = lax.psum(grads, AXIS)
  elif cfg.rep_grad:
    perturbations = _zero_perturbations(state.params, batch, cfg)
    local, vjp_fn = jax.vjp(
        lambda p, z: _local_terms(p, z, batch, dropout_rng, denom, cfg),
        state.params, perturbations)
    eye = jnp.eye(num_terms, dtype=local.dtype)
    rep_grads = jax.vmap(lambda ct: vjp_fn(ct)[1])(eye)  # towers only (DCE)
    global_terms = lax.psum(local, AXIS)
    gram = lax.psum(gram_matrix(rep_grads, num_terms), AXIS)
    combination, wstate, diag = update_weighting(
        global_terms, weighting_base.TaskGrads(gram))
    coeffs = lax.stop_gradient(combination.coeffs)
    grads = vjp_fn(coeffs)[0]
    if not method.scales_specific:  # task-specific params: unweighted sum;
      unweighted = vjp_fn(jnp.ones_like(coeffs))[0]  # its shared part is DCE'd
      grads = jax.tree_util.tree_map_with_path(
          lambda p, g, u: u if is_task_specific(p, cfg.model) else g,
          grads, unweighted)
    grads = lax.psum(grads, AXIS)
  else:
    local, vjp_fn = jax.vjp(
        lambda p: _local_terms(p, None, batch, dropout_rng, denom, cfg),
        state.params)
    eye = jnp.eye(num_terms, dtype=local.dtype)
    per_term = lax.psum(jax.vmap(lambda ct: vjp_fn(ct)[0])(eye), AXIS)
    global_terms = lax.psum(local, AXIS)
    shared = _shared_only(per_term, cfg)
    flat = None
    if method.needs_full_grads:
      flat = jax.vmap(lambda g: ravel_pytree(g)[0])(shared)
    combination, wstate, diag = update_weighting(
        global_terms, weighting_base.TaskGrads(gram_matrix(shared, num_terms),
                                               flat))
    combination = jax.tree.map(lax.stop_gradient, combination)
    grads = _combine(per_term, combination, cfg)

  updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": jnp.sum(global_terms),
             "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params),
             "num_examples": denom}
  raw = global_terms / cfg.fixed_weights
  metrics.update({f"loss/{n}": raw[i] for i, n in enumerate(cfg.terms)})
  metrics.update(diag)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, weighting_state=wstate)
  return new_state, metrics


def gradient_diagnostics(state: state_lib.TrainState, batch, *,
                         cfg: StepConfig) -> Dict[str, jax.Array]:
  """Per-term gradient norms and pairwise cosines on the shared parameters.

  Run every N steps for any method (it costs T backward passes):
  "grad_norm/<term>" and "grad_cos/<a>/<b>" (negative = conflict).
  """
  denom = jnp.maximum(lax.psum(jnp.sum(batch["weights"]), AXIS), 1.0)
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                           lax.axis_index(AXIS))
  local, vjp_fn = jax.vjp(
      lambda p: _local_terms(p, None, batch, rng, denom, cfg), state.params)
  eye = jnp.eye(len(cfg.terms), dtype=local.dtype)
  per_term = lax.psum(jax.vmap(lambda ct: vjp_fn(ct)[0])(eye), AXIS)
  gram = gram_matrix(_shared_only(per_term, cfg), len(cfg.terms))
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  out = {f"grad_norm/{n}": norms[i] for i, n in enumerate(cfg.terms)}
  for i, a in enumerate(cfg.terms):
    for j in range(i + 1, len(cfg.terms)):
      out[f"grad_cos/{a}/{cfg.terms[j]}"] = gram[i, j] / jnp.maximum(
          norms[i] * norms[j], 1e-12)
  return out


def eval_step(params, batch: Mapping[str, jax.Array], *, model: nn.Module
              ) -> Dict[str, jax.Array]:
  """Per-example outputs for this device's shard (no collectives needed).

  Returns:
    {"outputs/<task>": float[b], "gates": float[b, T, E] if the model has
    gates, "cvr_logits": float[b] for ESMM}; padding rows are dropped on the
    host by their weight.
  """
  outputs, aux = model.apply({"params": params}, batch, train=False)
  result = {f"outputs/{name}": value for name, value in outputs.items()}
  for key in ("gates", "cvr_logits"):
    if key in aux:
      result[key] = aux[key]
  return result
