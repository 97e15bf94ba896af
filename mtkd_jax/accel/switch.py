"""The accel switch: what `train.accel` turns on, and the optimizer seam."""
import contextlib

import jax

from mtkd_jax import errors
from mtkd_jax import registry
from mtkd_jax.accel import host_memory
from mtkd_jax.accel import native
from mtkd_jax.accel import row_grads
from mtkd_jax.accel import row_optim
from mtkd_jax.train import state as state_lib

CHOICES = ("auto", "on", "off")


def enabled(config) -> bool:
  """`train.accel` resolved: "off" (the default), "on", or "auto" (on for
  the CPU backend only)."""
  choice = config.train.get("accel", "off")
  if choice not in CHOICES:
    raise errors.ConfigError(f"train.accel must be one of {', '.join(CHOICES)}, "
                             f"got {choice!r}.")
  return choice == "on" or (choice == "auto" and jax.default_backend() == "cpu")


def setup_process(config) -> None:
  """Process-wide settings of an accelerated run (before any allocation)."""
  if enabled(config):
    host_memory.reuse_freed_memory()


def release_freed_memory() -> None:
  """After one-off work (loading, compiling): its freed memory back to the
  OS, when `setup_process` kept freed memory."""
  host_memory.release_freed_memory()


def kernels(on: bool):
  """A context for tracing: native kernels allowed (`on`) or not."""
  return contextlib.nullcontext() if on else native.off()


def make_optimizer(config, total_steps: int):
  """The run's optimizer: optax (`train.state.make_optimizer`), or a
  `row_optim.SplitOptimizer` when `optimizer.embedding` names a row-sparse
  optimizer, or when accel is on and `optimizer.name` is "adam" (its
  tables then get `row_optim.dense_adam`, optax.adam's update bit for bit).
  """
  cfg = config.optimizer
  embedding = cfg.get("embedding", "dense")
  if embedding == "dense" and cfg.name == "adam" and enabled(config):
    embedding = "adam"  # the same dense Adam, fed by row gradients
  if embedding == "dense":
    return state_lib.make_optimizer(cfg, total_steps)
  schedule = state_lib.make_schedule(cfg, total_steps)
  rows = registry.lookup(
      {**row_optim.ROW_OPTIMIZERS, "dense": None}, embedding,
      "embedding optimizer")(schedule, cfg)
  adam = (row_optim.AdamConfig(schedule, cfg.b1, cfg.b2, cfg.eps)
          if cfg.name == "adam" else None)
  dense = registry.lookup(state_lib.OPTIMIZERS, cfg.name, "optimizer")(schedule, cfg)
  return row_optim.SplitOptimizer(dense, rows, float(cfg.grad_clip_norm), adam)


def _split(tx):
  """`tx` if it is a SplitOptimizer (the one type check), else None."""
  return tx if isinstance(tx, row_optim.SplitOptimizer) else None


def optimizer_update(tx):
  """(update, needs row gradients) of the step's optimizer: a
  SplitOptimizer's `apply`, else optax's update (compact table rows
  densified first). `update(params, opt_state, grads, row_ids) ->
  (params, opt_state, grad_norm)`."""
  split = _split(tx)
  if split is not None:
    return split.apply, not split.rows.moves_all_rows
  return row_optim.optax_update(tx), False


def use_row_grads(config, tx, method, params) -> bool:
  """`train.embedding_grads` resolved, with the combinations that cannot
  work refused. "auto": rows iff the tables have a SplitOptimizer (a
  row-sparse one, or dense Adam fed by rows) and are 2-D."""
  choice = config.train.get("embedding_grads", "auto")
  if choice not in ("auto", "dense", "rows"):
    raise errors.ConfigError(f"train.embedding_grads must be 'auto', 'dense' "
                             f"or 'rows', got {choice!r}.")
  split = _split(tx)
  # A row-sparse optimizer (not a dense one fed by rows) needs row gradients.
  sparse_opt = split is not None and not split.rows.moves_all_rows
  if sparse_opt and choice == "dense":
    raise errors.ConfigError(
        "A row-sparse optimizer.embedding needs the table gradients as rows: "
        "set train.embedding_grads to 'rows' or 'auto'.")
  stacked = row_grads.has_stacked_tables(params)
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
    return split is not None and not stacked
  return choice == "rows"
