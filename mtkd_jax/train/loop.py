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

Steps per call (`train.steps_per_call` = k > 1): a compiled call may run k
updates (`Trainer.scan_step`). Every event above stays at its step: a
k-call is taken only when none of the steps it passes through is an event
step and none of its updates takes the gradient diagnostics (`call_size`);
otherwise the loop takes single steps up to the event. With `log_every`,
`eval_every` and `checkpoint_every` multiples of k (and k dividing the
step count), every call is a k-call except the k single steps up to each
diagnostics update (every `weighting.diagnostics_every`; 0 turns them
off). The calls are a function of the step count alone, so a resumed run
makes the same calls as an uninterrupted one. A preemption signal is
honoured at the next call boundary, after at most k updates.
"""
import json
import math
import time
from typing import Dict, List

import jax
import ml_collections
import numpy as np
from absl import logging

from mtkd_jax import config_checks
from mtkd_jax import errors
from mtkd_jax import paths
from mtkd_jax import serving_info
from mtkd_jax.accel import switch as accel
from mtkd_jax.data import pipeline
from mtkd_jax.train import checkpoint as checkpoint_lib
from mtkd_jax.train import mesh as mesh_lib
from mtkd_jax.train import hosts
from mtkd_jax.train import model_stats
from mtkd_jax.train import preemption
from mtkd_jax.train import trainer as trainer_lib
from mtkd_jax.train import workdir as workdir_lib
from mtkd_jax.train import writers


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


def call_size(step: int, total_steps: int, tcfg, diagnostics_every: int
              ) -> int:
  """The updates of the compiled call from `step` updates done:
  `tcfg.steps_per_call` (k) when none of the steps it passes through,
  step+1 .. step+k-1, is an event step (a log, evaluation, checkpoint or
  the last step) and none of its updates step+1 .. step+k takes the gradient
  diagnostics; else 1."""
  k = tcfg.get("steps_per_call", 1)
  if k == 1:
    return 1
  if any(step_events(s, total_steps, tcfg)[3] for s in range(step + 1,
                                                               step + k)):
    return 1
  if diagnostics_every and any(u % diagnostics_every == 0
                               for u in range(step + 1, step + k + 1)):
    return 1
  return k


def call_sizes(step: int, total_steps: int, tcfg, diagnostics_every: int):
  """The updates of each compiled call from `step` updates done to the
  end."""
  while step < total_steps:
    size = call_size(step, total_steps, tcfg, diagnostics_every)
    yield size
    step += size


def call_batches(trainer, start_step: int):
  """(updates, device batch) of each call from update `start_step` on: one
  host batch for a single step, k stacked [B, k, ...] for a k-call."""
  host = trainer.train_batches(start_step, prefetch=False)
  sizes = call_sizes(start_step, trainer.total_steps, trainer.config.train,
                     trainer.config.weighting.diagnostics_every)
  calls = ((n, next(host) if n == 1 else
            trainer_lib.stack_batches([next(host) for _ in range(n)]))
           for n in sizes)
  return pipeline.prefetch(calls, lambda call: (call[0], trainer.put(call[1])))


def per_step_metrics(calls) -> List[Dict[str, np.ndarray]]:
  """[(updates, metrics)] of calls, read to the host -> one metrics dict per
  update (a k-call's metrics are [k] arrays)."""
  steps = []
  for n, metrics in calls:
    steps.extend([metrics] if n == 1 else
                 [{k: v[i] for k, v in metrics.items()} for i in range(n)])
  return steps


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


def advance(trainer, state, batch, step: int, first: bool, size: int = 1):
  """(state, metrics) after one update (`size` > 1: `size` updates of
  `scan_step`, metrics [size]) from `step` updates done. The `first` call
  (of its size) logs its compile + run time; every
  `weighting.diagnostics_every`-th update adds the per-term gradient
  diagnostics taken before it (single steps only: see `call_size`)."""
  every = trainer.config.weighting.diagnostics_every
  diagnostics = {}
  if size == 1 and every and (step + 1) % every == 0:
    diagnostics = trainer.diagnostics_step(state, batch)  # before the update
  step_fn = trainer.train_step if size == 1 else trainer.scan_step
  if not first:
    state, metrics = step_fn(state, batch)
    return state, {**metrics, **diagnostics}
  t0 = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  logging.info("First call of %d step(s) (compile + run): %.2f s.", size,
               time.perf_counter() - t0)
  accel.release_freed_memory()  # the compiler's memory
  return state, {**metrics, **diagnostics}


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
  config_checks.check_config(config)
  wd = paths.workdir(workdir)  # a bad scheme stops here, before any work
  multihost = hosts.initialize(config.train)
  with workdir_lib.claim(workdir, config):
    return _train_and_evaluate(config, workdir, wd, multihost)


def _train_and_evaluate(config, workdir, wd, multihost):
  trainer = trainer_lib.build(config, workdir)
  splits, spec, model = trainer.splits, trainer.spec, trainer.model
  total_steps, distill, mesh = trainer.total_steps, trainer.distill, trainer.mesh
  init_state = trainer.init_state
  if jax.process_index() == 0:  # what an export needs besides the checkpoint
    serving_info.save(workdir, spec, next(pipeline.eval_batches(
        splits.test, serving_info.NUM_EXAMPLES)), splits.extras)
  tcfg = config.train
  state = mesh_lib.place_state(init_state, mesh)  # tables sharded, if asked
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

  run_eval = trainer.evaluate

  def save_latest(step):
    ckpt.save_latest(step, hosts.as_global(state, mesh), loop_state)

  step = start_step
  done = step >= total_steps or loop_state["stopped_early"]
  calls, compiled = call_batches(trainer, start_step), set()
  progress = None if done else _progress(total_steps, start_step)
  buffer, buffer_start = [], step + 1
  last_time, last_step = time.perf_counter(), step
  watcher, preempted = preemption.Watcher(multihost), False
  try:
    while not done:
      size, batch = next(calls)
      state, metrics = advance(trainer, state, batch, step,
                               first=size not in compiled, size=size)
      compiled.add(size)
      step += size
      buffer.append((size, metrics))
      is_last, is_eval, is_ckpt, is_log = step_events(step, total_steps, tcfg)
      if is_log:
        host = per_step_metrics(jax.device_get(buffer))
        check_finite(host, buffer_start, spec.task_names)
        now = time.perf_counter()
        summary = mean_metrics(host)
        summary.update({k: float(v) for k, v in jax.device_get(
            trainer.param_norm(state.params)).items()})
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
          ckpt.save_best(step, hosts.as_global(state, mesh), val)
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
      if not (done or is_last) and any([  # each step, as multi-host needs
          watcher.requested(s) for s in range(step - size + 1, step + 1)]):
        save_latest(step)
        preempted = done = True
      done = done or is_last
  except BaseException:
    watcher.close()
    raise
  finally:
    if progress is not None:
      progress.close()
  ckpt.wait()
  if preempted:
    watcher.close()
    writer.close()
    ckpt.close()
    raise preemption.Preempted(step, workdir)

  best_state, best_val = ckpt.restore_best(hosts.as_global(state, mesh))
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
    (wd / "results.json").write_text(json.dumps(results, indent=2))
  ckpt.close()
  watcher.close()
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
