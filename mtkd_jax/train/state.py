"""The train state and the optimizer built from a config."""
import contextlib
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mtkd_jax import registry


@flax.struct.dataclass
class TrainState:
  """Everything a training run needs to continue exactly where it stopped.

  Attributes:
    step: int32 scalar, the number of optimizer updates done.
    params: the model's parameters.
    opt_state: the optimizer's state (an `accel.row_optim.SplitState` when
      the embedding tables have their own optimizer).
    rng: the run's base PRNG key; step s uses `fold_in(rng, s)`.
    weighting_state: the multi-task weighting method's state (learnable or
      running task weights); an empty dict for fixed weights.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  weighting_state: Any = flax.struct.field(default_factory=dict)


def _constant(cfg, total_steps):
  del total_steps
  return optax.constant_schedule(cfg.learning_rate)


def _cosine(cfg, total_steps):
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if cfg.warmup_steps else cfg.learning_rate,
      peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      decay_steps=max(total_steps, cfg.warmup_steps + 1), end_value=0.0)


def _warmup_constant(cfg, total_steps):
  del total_steps
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
       optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])


SCHEDULES = {"constant": _constant, "cosine": _cosine,
             "warmup_constant": _warmup_constant}

OPTIMIZERS = {
    "adam": lambda lr, cfg: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
    "adamw": lambda lr, cfg: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                         weight_decay=cfg.weight_decay),
    "sgd": lambda lr, cfg: optax.sgd(lr, momentum=cfg.momentum or None),
    "adagrad": lambda lr, cfg: optax.adagrad(lr, eps=cfg.eps),
}


def make_schedule(cfg, total_steps: int):
  """The learning-rate schedule named by `cfg.schedule`."""
  return registry.lookup(SCHEDULES, cfg.schedule, "schedule")(cfg, total_steps)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """The optax transformation named by `cfg.name`, with `cfg.schedule` and
  `cfg.grad_clip_norm` (`optimizer.name="adam"` is `optax.adam`).

  A run builds its optimizer with `accel.switch.make_optimizer`, which
  returns this one unless the embedding tables get their own (a row-sparse
  `optimizer.embedding`, or row-fed Adam with `train.accel` on).

  Args:
    cfg: the `optimizer` config block (name, learning_rate, schedule,
      warmup_steps, b1, b2, eps, weight_decay, momentum, grad_clip_norm).
    total_steps: the run's length, for decaying schedules.
  """
  schedule = make_schedule(cfg, total_steps)
  tx = registry.lookup(OPTIMIZERS, cfg.name, "optimizer")(schedule, cfg)
  if cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx


def on_host():
  """A context in which new arrays, and jitted calls on them, live on the
  host's CPU device (where the backend has one; else a no-op).

  The initial train state is built there and then placed on the mesh
  (tables sharded): built on the default device, a whole table and its
  optimizer state would first have to fit on one accelerator.
  """
  try:
    cpu = jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS without cpu
    return contextlib.nullcontext()
  return jax.default_device(cpu)


def create_train_state(model, tx, example_batch, seed: int,
                       weighting_state=None) -> TrainState:
  """Initialises params from `example_batch` (shapes only matter), on the
  host's CPU device (`on_host`)."""
  with on_host():
    return _create_train_state(model, tx, example_batch, seed, weighting_state)


def _create_train_state(model, tx, example_batch, seed, weighting_state):
  rng = jax.random.PRNGKey(seed)  # raw uint32[2]: checkpoints as a plain array
  init_rng, dropout_rng, run_rng = jax.random.split(rng, 3)
  init = jax.jit(functools.partial(model.init, train=False))  # one compile
  variables = init({"params": init_rng, "dropout": dropout_rng}, example_batch)
  params = variables["params"]  # other collections (perturbations) are per-step
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=run_rng,
                    weighting_state={} if weighting_state is None else weighting_state)
