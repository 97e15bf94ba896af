"""`build(config) -> Trainer`: everything a training loop runs, from a config.

One factory for the single-seed loop (`loop.py`), the vmapped-seeds runner
(`multiseed.py`) and the benchmarks: the data, model, mesh and optimizer
(`setup`), the distillation plug-in, the initial state, the step's static
pieces, the compiled train / diagnostics / eval steps and the batch
iterators. With `seeds`, the same pieces for S seeds in one program: the
states stacked on a leading axis, the per-device steps under `jax.vmap`
(batches [B, S, ...], outputs [b, S, ...]); that is the only difference.
With `train.steps_per_call` k > 1, also a step that runs k updates in one
call: `lax.scan` of the per-device train step over k batches stacked the
same way, [B, k, ...] (rows on axis 0, so they are sharded as one batch).
"""
import dataclasses
import functools
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from mtkd_jax import data as data_lib
from mtkd_jax import errors
from mtkd_jax import losses
from mtkd_jax import models
from mtkd_jax.accel import switch as accel
from mtkd_jax.data import pipeline
from mtkd_jax.distill import plugin as distill_plugin
from mtkd_jax.train import evaluate
from mtkd_jax.train import mesh as mesh_lib
from mtkd_jax.train import parallel
from mtkd_jax.train import state as state_lib
from mtkd_jax.train import step as step_lib


class Experiment(NamedTuple):
  """What a config resolves to before any training state exists."""
  splits: Any
  spec: Any
  model: Any
  mesh: Any
  tx: Any
  total_steps: int
  example_batch: dict


def setup(config: ml_collections.ConfigDict, splits=None) -> Experiment:
  """Loads the data (unless `splits` are given) and builds the model, mesh
  and optimizer of a config, checking names and sizes before anything
  compiles."""
  accel.setup_process(config)
  if splits is None:
    splits = data_lib.load_dataset(config.data)
    accel.release_freed_memory()  # the loaders' temporaries
  tcfg = config.train
  mesh = parallel.make_mesh(tcfg.num_devices, tcfg.get("mesh", ""))
  mesh_lib.check_config(config, mesh)
  spec = dataclasses.replace(  # tables padded to split evenly over `model`
      splits.spec.with_task_overrides(config.tasks.to_dict()),
      table_row_multiple=mesh_lib.model_size(mesh))
  for task in spec.tasks:  # fail on a bad loss name now, not inside jit
    losses.get_loss(task.loss)
  model = distill_plugin.student_model(
      models.build_model(spec, config.model, splits.extras), spec, config)
  if tcfg.select_mode not in ("max", "min"):
    raise errors.ConfigError(f"select_mode must be 'max' or 'min', got "
                             f"{tcfg.select_mode!r}.")
  parallel.check_batch_size(tcfg.batch_size, mesh)
  parallel.check_batch_size(config.eval.batch_size, mesh)
  per_epoch = pipeline.steps_per_epoch(len(splits.train["weights"]),
                                       tcfg.batch_size)
  total_steps = tcfg.num_steps or tcfg.num_epochs * per_epoch
  tx = accel.make_optimizer(config, total_steps)
  example = next(pipeline.eval_batches(splits.train, tcfg.batch_size))
  return Experiment(splits, spec, model, mesh, tx, total_steps, example)


# ------------------------------------------------------------ seed vmapping


def stack_trees(trees):
  """[tree, ...] -> one tree whose leaves have a leading axis of len(trees)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def vmapped_train(fn):
  """Per-device fn(state[S], batch[b, S]) -> (state[S], metrics[S])."""
  def per_device(state, batch):
    return jax.vmap(fn, in_axes=(0, 1))(state, batch)
  return per_device


def vmapped_eval(fn):
  """Per-device fn(params[S], batch[b]) -> outputs[b, S, ...]."""
  def per_device(params, batch):
    out = jax.vmap(fn, in_axes=(0, None))(params, batch)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), out)
  return per_device


def stack_batches(batches):
  """Host batches -> one batch [B, len(batches), ...]: the new axis is the
  second, so the rows stay on axis 0 and are split over `data` as in one
  batch."""
  return {k: np.stack([b[k] for b in batches], axis=1) for k in batches[0]}


def stacked_batches(iterators):
  """Zips per-seed host batches into [B, S, ...] batches."""
  for batches in zip(*iterators):
    yield stack_batches(batches)


# ------------------------------------------------------- steps per call


def scanned_train(fn):
  """Per-device fn(state, batch[b, k], *args) -> (state, metrics[k]): k
  updates in one `lax.scan`, the i-th on the batch at index i of axis 1."""
  def per_device(state, batch, *args):
    steps = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), batch)
    return lax.scan(lambda s, b: fn(s, b, *args), state, steps)
  return per_device


def check_steps_per_call(config, seeds) -> int:
  """`train.steps_per_call`, which needs parallel "jit" and one seed."""
  k = config.train.get("steps_per_call", 1)
  if k > 1 and config.train.parallel != "jit":
    raise errors.ConfigError(
        f"train.steps_per_call={k} needs train.parallel='jit' (got "
        f"{config.train.parallel!r}); pass --config.train.steps_per_call=1 or "
        "--config.train.parallel=jit.")
  if k > 1 and seeds is not None:
    raise errors.ConfigError(
        f"train.steps_per_call={k} is for single-seed runs, not vmapped "
        "seeds; pass --config.train.steps_per_call=1.")
  return k


# ------------------------------------------------------------------ trainer


class Trainer(NamedTuple):
  """A config's training pieces (`build`). Host-side fields are numpy or
  host pytrees; the step functions take device arrays (`put`, `replicate`).

  Attributes (besides those of `Experiment`):
    config: the run's config.
    seeds: the vmapped seeds, or None for one run of `config.seed`.
    distill: the `distill.plugin.Distillation` of the run.
    step_cfg: the step's static pieces (`step.StepConfig`).
    init_state: the initial host TrainState (stacked [S] with seeds).
    train_step: compiled (state, batch) -> (state, metrics); donates state.
    diagnostics_step: compiled (state, batch) -> per-term gradient metrics.
    eval_step: compiled (params, batch) -> per-example outputs.
    param_norm: compiled params -> {"param_norm": ...} ([S] with seeds), for
      the steps whose metrics the loop reads.
    put: host batch -> device batch.
    scan_step: with `train.steps_per_call` > 1, compiled (state, batch
      [B, k, ...]) -> (state, metrics [k]): k updates in one call, the same
      as k calls of `train_step`; donates state. None otherwise.
  """
  config: Any
  splits: Any
  spec: Any
  model: Any
  mesh: Any
  tx: Any
  total_steps: int
  example_batch: dict
  seeds: Optional[tuple]
  distill: distill_plugin.Distillation
  step_cfg: step_lib.StepConfig
  init_state: state_lib.TrainState
  train_step: Callable
  diagnostics_step: Callable
  eval_step: Callable
  param_norm: Callable
  put: Callable
  scan_step: Optional[Callable] = None

  def replicate(self, tree):
    """A host pytree on every device of the mesh."""
    return parallel.replicate(tree, self.mesh)

  def new_train_step(self):
    """A freshly compiled train step (state, batch, *distill.step_args), for
    measuring lowering and compilation."""
    return _compile_train(self.config, self.mesh, self.step_cfg,
                          self.seeds, len(self.distill.step_args))

  def train_batches(self, start_step: int = 0, prefetch: bool = True
                    ) -> Iterator[dict]:
    """The run's training batches from update `start_step` on, on the
    devices (with `prefetch`) or as host batches; [B, S, ...] with seeds."""
    bs = self.config.train.batch_size
    columns = self.distill.train_columns
    if self.seeds is None:
      host = pipeline.train_batches(columns, bs, seed=self.config.seed,
                                    start_step=start_step)
    else:
      host = stacked_batches([
          pipeline.train_batches(columns, bs, seed=s, start_step=start_step)
          for s in self.seeds])
    return pipeline.prefetch(host, self.put) if prefetch else host

  def predict(self, params, split: str, batch_size: int = 0):
    """{key: np.ndarray[N, ...]} (or [N, S, ...]) of the eval step over a
    split's rows (`batch_size`, default `eval.batch_size`)."""
    return evaluate.predict(self.eval_step, params, self.splits.split(split),
                            batch_size or self.config.eval.batch_size,
                            self.put)

  def split_metrics(self, split: str, preds, extras=None):
    """The metrics of one run's predictions on a split (`evaluate`)."""
    if extras is None:
      extras = (self.splits.extras or {}).get(split)
    return evaluate.split_metrics(self.spec, self.splits.split(split), preds,
                                  extras)

  def evaluate(self, params, split: str):
    """One run's metrics on a split (`seeds` None)."""
    return self.split_metrics(split, self.predict(params, split))


def _compile_train(config, mesh, step_cfg, seeds, num_step_args,
                   scan=False):
  fn = functools.partial(step_lib.train_step, cfg=step_cfg)
  if seeds is not None:
    fn = vmapped_train(fn)
  if scan:
    fn = scanned_train(fn)
  return parallel.compile_step(fn, config.train.parallel, mesh,
                               out_batched=False, donate_state=True,
                               extra_args=num_step_args)


def _bind(fn, args):
  """fn(state, batch, *args) as fn(state, batch)."""
  if not args:
    return fn
  return lambda state, batch: fn(state, batch, *args)


def _predictor(mesh, mode, batch_size):
  """predict(per_device_fn, host params, columns) for the distillation
  plug-in: compiles the function and runs it over the columns' rows."""
  put = functools.partial(parallel.shard_batch, mode=mode, mesh=mesh)

  def predict(per_device_fn, params, columns):
    fn = parallel.compile_step(per_device_fn, mode, mesh, out_batched=True,
                               donate_state=False)
    return evaluate.predict(fn, parallel.replicate(params, mesh), columns,
                            batch_size, put)
  return predict


def _init_states(config, exp, workdir, seeds):
  """(distillation, initial host states, step config) of one run per seed."""
  states = [state_lib.create_train_state(exp.model, exp.tx, exp.example_batch,
                                         s) for s in seeds]
  mode = config.train.parallel
  distill = distill_plugin.build(
      config, exp.splits, exp.spec, exp.model, states[0].params,
      exp.example_batch,
      predict=_predictor(exp.mesh, mode, config.eval.batch_size),
      replicate=functools.partial(parallel.replicate, mesh=exp.mesh),
      table_row_multiple=mesh_lib.table_row_multiple, workdir=workdir)
  if distill.extra_params:  # + the hint projector: a new optimizer state
    with state_lib.on_host():  # as create_train_state
      states = [s.replace(params=distill.add_params(s.params)) for s in states]
      states = [s.replace(opt_state=exp.tx.init(s.params)) for s in states]
  step_cfg = step_lib.make_step_config(config, exp.model, exp.tx, exp.spec,
                                       states[0].params, exp.example_batch,
                                       distill=distill.spec)
  with state_lib.on_host():
    states = [s.replace(weighting_state=step_lib.init_weighting(
        step_cfg, s.params)) for s in states]
  return distill, states, step_cfg


def check_seeds(config, seeds: Sequence[int]) -> None:
  """Stops unless `seeds` can share one program of `config`."""
  if distill_plugin.needs_teachers_or_peers(config):
    raise errors.ConfigError(
        "Distillation runs train one seed per program (their teachers differ "
        "per seed); run them without --vmap_seeds.")
  if not seeds or len(set(seeds)) != len(seeds):
    raise errors.ConfigError(f"seeds must be distinct and non-empty; got "
                             f"{list(seeds)}.")


def build(config: ml_collections.ConfigDict, workdir: str = ".", *,
          seeds: Optional[Sequence[int]] = None, splits=None) -> Trainer:
  """The Trainer of `config`.

  Args:
    config: an experiment config.
    workdir: the run's workdir (teacher workdirs may be relative to it).
    seeds: train these seeds in one program (`jax.vmap`); None: one run of
      `config.seed`. Distillation with teachers or peers runs one seed.
    splits: the dataset, when the caller loaded it (default: from
      `config.data`).
  """
  if seeds is not None:
    seeds = tuple(int(s) for s in seeds)
    check_seeds(config, seeds)
  steps_per_call = check_steps_per_call(config, seeds)
  exp = setup(config, splits)
  distill, states, step_cfg = _init_states(
      config, exp, workdir, (config.seed,) if seeds is None else seeds)
  init_state = states[0] if seeds is None else stack_trees(states)
  mode, mesh = config.train.parallel, exp.mesh
  step_args = distill.step_args
  diagnostics = functools.partial(step_lib.gradient_diagnostics, cfg=step_cfg)
  evaluation = functools.partial(step_lib.eval_step, model=exp.model,
                                 compute_dtype=step_cfg.compute_dtype,
                                 accel_on=step_cfg.accel)
  param_norm = step_lib.param_norm
  if seeds is not None:
    diagnostics, evaluation = vmapped_train(diagnostics), vmapped_eval(evaluation)
    param_norm = jax.vmap(param_norm)
  train_fn = _compile_train(config, mesh, step_cfg, seeds, len(step_args))
  scan_fn = (_compile_train(config, mesh, step_cfg, seeds, len(step_args),
                            scan=True) if steps_per_call > 1 else None)
  diagnostics_fn = parallel.compile_step(
      diagnostics, mode, mesh, out_batched=False, donate_state=False,
      extra_args=len(step_args))
  eval_fn = parallel.compile_step(evaluation, mode, mesh, out_batched=True,
                                  donate_state=False)
  return Trainer(
      config=config, **exp._asdict(), seeds=seeds, distill=distill,
      step_cfg=step_cfg, init_state=init_state,
      train_step=_bind(train_fn, step_args),
      diagnostics_step=_bind(diagnostics_fn, step_args), eval_step=eval_fn,
      param_norm=jax.jit(param_norm),
      put=functools.partial(parallel.shard_batch, mode=mode, mesh=mesh),
      scan_step=None if scan_fn is None else _bind(scan_fn, step_args))
