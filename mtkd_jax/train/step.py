"""Per-device train and eval steps (pmap-style), pure and jit-compiled once.

The functions here run on one device's shard of the global batch and use
explicit collectives over the `data` axis; `parallel.py` runs them under
`jax.jit` + `shard_map` on a device mesh or under `jax.pmap`.

Gradients: each device differentiates its LOCAL share of the global weighted
mean, `sum_{i in shard} w_i l_i / sum_{all i} w_i`, and the shares are summed
(`psum`) across devices. This is exact with padding (w = 0) and uneven real
rows per device, and equals the single-device full-batch gradient.
"""
from typing import Callable, Dict, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtkd_jax import losses as losses_lib
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.train import state as state_lib

AXIS = "data"


def task_loss_sums(outputs, batch, tasks: Sequence[specs_lib.TaskSpec]):
  """name -> (sum_i w_i l_t(i), sum_i w_i) over this device's rows."""
  weights = batch["weights"]
  sums = {}
  for task in tasks:
    per_example = losses_lib.get_loss(task.loss)(
        outputs[task.name], batch[f"labels/{task.name}"])
    sums[task.name] = losses_lib.weighted_sum_and_count(per_example, weights)[0]
  return sums, jnp.sum(weights)


def train_step(state: state_lib.TrainState, batch: Mapping[str, jax.Array], *,
               model: nn.Module, tx: optax.GradientTransformation,
               tasks: Sequence[specs_lib.TaskSpec]):
  """One optimizer update on the global batch; per-device code.

  Args:
    state: the replicated train state.
    batch: this device's shard, in the layout of `mtkd_jax.data.specs`.
    model: a registered model (bound with functools.partial).
    tx: the optimizer.
    tasks: the task specs (loss name and weight per task).
  Returns:
    (new_state, metrics): metrics are global scalars: "loss" (the weighted
    total), "loss/<task>" (each term's global weighted mean), "grad_norm",
    "param_norm", "num_examples".
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
  global_count = lax.psum(jnp.sum(batch["weights"]), AXIS)
  denom = jnp.maximum(global_count, 1.0)
  term_weights = {t.name: t.weight for t in tasks}

  def loss_fn(params):
    outputs, _ = model.apply({"params": params}, batch, train=True,
                             rngs={"dropout": dropout_rng})
    sums, _ = task_loss_sums(outputs, batch, tasks)
    terms = {name: s / denom for name, s in sums.items()}
    total, terms = losses_lib.multitask_loss(terms, term_weights)
    return total, terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads, loss, terms = lax.psum((grads, loss, terms), AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params),
             "num_examples": global_count}
  metrics.update({f"loss/{name}": value for name, value in terms.items()})
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(params, batch: Mapping[str, jax.Array], *, model: nn.Module
              ) -> Dict[str, jax.Array]:
  """Per-example outputs for this device's shard (no collectives needed).

  Returns:
    {"outputs/<task>": float[b], "gates": float[b, T, E] if the model has
    gates}; padding rows are dropped on the host by their weight.
  """
  outputs, aux = model.apply({"params": params}, batch, train=False)
  result = {f"outputs/{name}": value for name, value in outputs.items()}
  if "gates" in aux:
    result["gates"] = aux["gates"]
  return result
