"""`train_and_evaluate(config, workdir)`: the whole run, resumable.

Order of events for step s (1-based count of updates done):
  log (every `log_every`): read the buffered step metrics to the host, stop
      on a non-finite loss (naming step and task), write them;
  eval (every `eval_every` and at the end): validation metrics; the best by
      `select_metric` is saved to <workdir>/best; early stopping counts here;
  checkpoint (every `checkpoint_every` and at the end): the latest state and
      the loop state, so a restarted run continues bit-for-bit.
At the end the best checkpoint is restored and evaluated on validation and,
once, on test; results go to <workdir>/results.json.
"""
import functools
import json
import math
import os
import time
from typing import Any, Dict, List, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from mtkd_jax import data as data_lib
from mtkd_jax import errors
from mtkd_jax import losses
from mtkd_jax import models
from mtkd_jax.accel import switch as accel
from mtkd_jax.data import pipeline
from mtkd_jax.distill import mutual
from mtkd_jax.distill import setup as distill_setup
from mtkd_jax.train import checkpoint as checkpoint_lib
from mtkd_jax.train import evaluate
from mtkd_jax.train import model_stats
from mtkd_jax.train import parallel
from mtkd_jax.train import state as state_lib
from mtkd_jax.train import step as step_lib
from mtkd_jax.train import writers

# Re-exported: building a step needs only `step`, not the loop.
make_step_config = step_lib.make_step_config
init_weighting = step_lib.init_weighting


def _progress(total, initial):
  if jax.process_index() != 0:
    return None
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, desc="train", unit="step",
                   dynamic_ncols=True)


def step_events(step: int, total_steps: int, tcfg):
  """(is_last, is_eval, is_ckpt, is_log) after `step` updates.

  Evaluation and checkpoints come every `eval_every` / `checkpoint_every`
  steps and at the end; metrics are read to the host at every one of those
  and every `log_every` steps.
  """
  is_last = step >= total_steps
  is_eval = bool(is_last or (tcfg.eval_every and step % tcfg.eval_every == 0))
  is_ckpt = bool(is_last or (tcfg.checkpoint_every and
                             step % tcfg.checkpoint_every == 0))
  is_log = is_eval or is_ckpt or step % tcfg.log_every == 0
  return is_last, is_eval, is_ckpt, is_log


def mean_metrics(step_metrics: List[Dict[str, np.ndarray]]) -> Dict[str, float]:
  """Each metric's mean over the steps that have it ("num_examples" left
  out)."""
  summary = {}
  for k in set().union(*step_metrics) - {"num_examples"}:
    summary[k] = float(np.mean([float(m[k]) for m in step_metrics if k in m]))
  return summary


def check_finite(step_metrics: List[Dict[str, np.ndarray]], first_step: int,
                 task_names) -> None:
  """Raises NonFiniteLossError naming the first step and task with a bad loss."""
  for offset, m in enumerate(step_metrics):
    for name in task_names:
      value = float(m[f"loss/{name}"])
      if not math.isfinite(value):
        raise errors.NonFiniteLossError(
            f"Non-finite loss at step {first_step + offset}: task {name!r} "
            f"loss = {value}. Lower the learning rate, clip gradients "
            "(--config.optimizer.grad_clip_norm) or check the data.")
    if not math.isfinite(float(m["loss"])):
      raise errors.NonFiniteLossError(
          f"Non-finite total loss at step {first_step + offset}: "
          f"{float(m['loss'])}.")


class Experiment(NamedTuple):
  """What a config resolves to before any training state exists."""
  splits: Any
  spec: Any
  model: Any
  mesh: Any
  tx: Any
  total_steps: int
  example_batch: dict


def setup(config: ml_collections.ConfigDict) -> Experiment:
  """Loads the data and builds the model, mesh and optimizer of a config,
  checking names and sizes before anything compiles."""
  accel.setup_process(config)
  splits = data_lib.load_dataset(config.data)
  accel.release_freed_memory()  # the loaders' temporaries
  spec = splits.spec.with_task_overrides(config.tasks.to_dict())
  for task in spec.tasks:  # fail on a bad loss name now, not inside jit
    losses.get_loss(task.loss)
  model = mutual.maybe_wrap(
      models.build_model(spec, config.model, splits.extras), spec, config)
  tcfg = config.train
  if tcfg.select_mode not in ("max", "min"):
    raise errors.ConfigError(f"select_mode must be 'max' or 'min', got "
                             f"{tcfg.select_mode!r}.")
  mesh = parallel.make_mesh(tcfg.num_devices)
  parallel.check_batch_size(tcfg.batch_size, mesh)
  parallel.check_batch_size(config.eval.batch_size, mesh)
  per_epoch = pipeline.steps_per_epoch(len(splits.train["weights"]),
                                       tcfg.batch_size)
  total_steps = tcfg.num_steps or tcfg.num_epochs * per_epoch
  tx = accel.make_optimizer(config, total_steps)
  example = next(pipeline.eval_batches(splits.train, tcfg.batch_size))
  return Experiment(splits, spec, model, mesh, tx, total_steps, example)


def prepare_training(config, workdir: str):
  """(experiment, distillation, initial host state, step config) of a run.

  The initial state holds the model's params (with the distillation hint
  projector when a hint is on), the optimizer state and the weighting
  method's state; `distillation.teacher_params` are the frozen teachers'
  params the step takes as its third argument in online mode.
  """
  exp = setup(config)
  init_state = state_lib.create_train_state(exp.model, exp.tx,
                                            exp.example_batch, config.seed)
  distill = distill_setup.prepare(config, exp.splits, exp.spec, exp.model,
                                  init_state.params, exp.example_batch,
                                  exp.mesh, config.train.parallel, workdir)
  if distill.init_params is not init_state.params:  # + the hint projector
    init_state = init_state.replace(params=distill.init_params,
                                    opt_state=exp.tx.init(distill.init_params))
  step_cfg = step_lib.make_step_config(config, exp.model, exp.tx, exp.spec,
                                       init_state.params, exp.example_batch,
                                       distill=distill.spec)
  init_state = init_state.replace(weighting_state=step_lib.init_weighting(
      step_cfg, config.weighting, init_state.params))
  return exp, distill, init_state, step_cfg


def _is_better(value, best, mode):
  if best is None:
    return True
  return value > best if mode == "max" else value < best


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, selects on validation, tests the best checkpoint once.

  Args:
    config: an experiment config (see configs/).
    workdir: where checkpoints, metrics, TensorBoard files and results go; a
      workdir with checkpoints is resumed from its latest one.
  Returns:
    The final results: {"validation": {...}, "test": {...}, "best_step": s}.
  """
  if config.train.distributed:
    jax.distributed.initialize()
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  exp, distill, init_state, step_cfg = prepare_training(config, workdir)
  splits, spec, model, mesh, tx, total_steps, example = exp
  tcfg = config.train
  mode = tcfg.parallel
  teacher_args = (distill.teacher_params,) if distill.online else ()
  state = parallel.replicate(init_state, mesh)
  accel.release_freed_memory()  # init's compilations
  logging.info("Model %s: %s parameters.", config.model.name,
               f"{sum(x.size for x in jax.tree.leaves(init_state.params)):,}")

  ckpt = checkpoint_lib.Checkpointer(workdir, keep=tcfg.keep_checkpoints)
  loop_state = {"best_value": None, "best_step": None, "evals_since_best": 0,
                "stopped_early": False}
  start_step = 0
  if ckpt.latest_step() is not None:
    state, loop_state = ckpt.restore_latest(state)
    start_step = int(jax.device_get(state.step))
    logging.info("Resumed from step %d in %s.", start_step, workdir)
  writer = writers.MetricWriter(workdir, resume_step=start_step,
                                tensorboard=tcfg.tensorboard)

  train_fn = parallel.compile_step(
      functools.partial(step_lib.train_step, cfg=step_cfg),
      mode, mesh, out_batched=False, donate_state=True,
      extra_args=len(teacher_args))
  diagnostics_fn = parallel.compile_step(
      functools.partial(step_lib.gradient_diagnostics, cfg=step_cfg),
      mode, mesh, out_batched=False, donate_state=False,
      extra_args=len(teacher_args))
  diagnostics_every = config.weighting.diagnostics_every
  param_norm_fn = jax.jit(step_lib.param_norm)  # on the steps it logs
  eval_fn = parallel.compile_step(
      functools.partial(step_lib.eval_step, model=model,
                        compute_dtype=step_cfg.compute_dtype,
                        accel_on=step_cfg.accel),
      mode, mesh, out_batched=True, donate_state=False)
  put = functools.partial(parallel.shard_batch, mode=mode, mesh=mesh)

  def run_eval(params, split):
    columns = splits.split(split)
    preds = evaluate.predict(eval_fn, params, columns,
                             config.eval.batch_size, put)
    return evaluate.split_metrics(spec, columns, preds,
                                  (splits.extras or {}).get(split))

  def save_latest(step):
    ckpt.save_latest(step, state, loop_state)

  step = start_step
  done = step >= total_steps or loop_state["stopped_early"]
  batches = pipeline.prefetch(
      pipeline.train_batches(distill.train_columns, tcfg.batch_size,
                             seed=config.seed,
                             start_step=start_step), put)
  progress = None if done else _progress(total_steps, start_step)
  buffer, buffer_start = [], step + 1
  last_time, last_step = time.perf_counter(), step
  try:
    while not done:
      batch = next(batches)
      if step == start_step:
        t0 = time.perf_counter()
        state, metrics = train_fn(state, batch, *teacher_args)
        jax.block_until_ready(metrics)
        logging.info("First step (compile + run): %.2f s.",
                     time.perf_counter() - t0)
        accel.release_freed_memory()  # the compiler's memory
      else:
        is_diag = diagnostics_every and (step + 1) % diagnostics_every == 0
        if is_diag:
          diagnostics = diagnostics_fn(state, batch, *teacher_args)  # before
        state, metrics = train_fn(state, batch, *teacher_args)  # the update
        if is_diag:
          metrics = {**metrics, **diagnostics}
      step += 1
      buffer.append(metrics)
      is_last, is_eval, is_ckpt, is_log = step_events(step, total_steps, tcfg)
      if is_log:
        host = jax.device_get(buffer)
        check_finite(host, buffer_start, spec.task_names)
        now = time.perf_counter()
        summary = mean_metrics(host)
        summary.update({k: float(v) for k, v in jax.device_get(
            param_norm_fn(state.params)).items()})
        summary["examples_per_sec"] = (
            sum(float(m["num_examples"]) for m in host) / (now - last_time))
        summary["steps_per_sec"] = (step - last_step) / (now - last_time)
        writer.write(step, "train", summary)
        if progress is not None:
          progress.update(step - last_step)
          progress.set_postfix(loss=f"{summary['loss']:.4f}",
                               ex_s=f"{summary['examples_per_sec']:.0f}")
        buffer, buffer_start = [], step + 1
        last_time, last_step = now, step
      if is_eval:
        val = run_eval(state.params, "validation")
        accel.release_freed_memory()  # the eval step's compilation
        writer.write(step, "validation", val)
        if tcfg.select_metric not in val:
          raise errors.ConfigError(
              f"select_metric {tcfg.select_metric!r} is not a validation "
              f"metric; available: {', '.join(sorted(val))}.")
        value = val[tcfg.select_metric]
        if _is_better(value, loop_state["best_value"], tcfg.select_mode):
          loop_state.update(best_value=value, best_step=step, evals_since_best=0)
          ckpt.save_best(step, state, val)
        else:
          loop_state["evals_since_best"] += 1
          if tcfg.patience and loop_state["evals_since_best"] >= tcfg.patience:
            loop_state["stopped_early"] = True
            logging.info("Early stop at step %d: no better validation %s for %d "
                         "evaluations.", step, tcfg.select_metric, tcfg.patience)
            is_ckpt, done = True, True
        last_time = time.perf_counter()  # eval time is not train throughput
      if is_ckpt:
        save_latest(step)
      done = done or is_last
  finally:
    if progress is not None:
      progress.close()
  ckpt.wait()

  best_state, best_val = ckpt.restore_best(state)
  test = run_eval(best_state.params, "test")
  best_step = ckpt.best_step()
  writer.write(best_step, "test", test)
  writer.close()
  probe = next(pipeline.eval_batches(splits.test, config.eval.batch_size))
  results = {"best_step": best_step, "validation": best_val, "test": test,
             "select_metric": tcfg.select_metric, "steps": step,
             "model": model_stats.describe(model, best_state.params, probe)}
  if distill.teachers:
    results["teachers"] = [
        {"workdir": t.workdir, "model_name": t.config.model.name,
         "model": model_stats.describe(t.model, t.params, probe),
         "validation": t.validation, "test": t.test}
        for t in distill.teachers]
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  ckpt.close()
  _log_summary(spec, results)
  return results


def _log_summary(spec, results):
  lines = [f"Best validation {results['select_metric']} at step "
           f"{results['best_step']}; test metrics of that checkpoint:"]
  for task in spec.tasks:
    keys = sorted(k for k in results["test"] if k.startswith(task.name + "/"))
    lines.append("  " + task.name + ": " + ", ".join(
        f"{k.split('/', 1)[1]}={results['test'][k]:.4f}" for k in keys))
  print("\n".join(lines), flush=True)
