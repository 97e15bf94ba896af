"""Several seeds of one config in one compiled program (`jax.vmap` over seeds).

`train_and_evaluate_seeds(config, workdir, seeds)` trains S copies of the
config that differ only in `seed` (parameter init, dropout and weighting
PRNG, and the order of the training data: seed s shuffles with its own
`seed`, exactly like a single run with `config.seed = s`). It reuses the
library's pieces through `trainer.build(config, seeds=...)` (the same
factory as the single-seed loop, which only adds the vmap over seeds) and
the loop's `advance`, `step_events`, `mean_metrics` and `check_finite`.

Layout. The S TrainStates are stacked on a leading axis
(`jax.tree.map(jnp.stack)`); the host batch of a step is the S per-seed
batches stacked on axis 1, [B, S, ...], so the device mesh still splits the
batch on axis 0 and `parallel.compile_step` is used unchanged. Inside the
shard_map (or pmap) the per-device `train_step` runs under
`jax.vmap(in_axes=(0, 1))`; its `psum`s over the `data` axis work inside the
vmap. One compile serves all seeds. Evaluation vmaps `eval_step` over the
stacked params (the eval batch is shared) and returns [b, S, ...].

Per seed, the same schedule as the single-seed loop: logs (every
`log_every`, `eval_every`, `checkpoint_every` and at the end), validation
(every `eval_every` and at the end) with its own best and early stopping
(a stopped seed keeps being stepped with the others, but nothing about it is
recorded after its stop, so its results are those of a stopped run). The
best params of each seed are kept in host memory; at the end each seed's
best is tested once. Each seed gets `<seed workdir>/config.json`,
`metrics.jsonl` (+ TensorBoard) and `results.json` in the format of the
single-seed loop.

Float agreement. vmap turns the matmuls into batched matmuls and changes
the layout of reductions, which XLA may tile (and so round) differently: a
seed's metrics equal its single run's to float32 rounding over short runs
(~1e-7 relative after 24 steps; tests/train/test_multiseed.py), not bit for
bit. Training amplifies such differences like any other perturbation: on
the full mmoe_synthetic config (1975 Adam steps) the losses agree to ~1e-7
until step ~850, then drift apart (validation mean RMSE 1e-3 relative at the
end, test metrics up to ~2%; benchmarks/vmap_seeds.py reports the largest).
That is seed-to-seed noise far below the spread between seeds, but a
vmapped run is a different sample than the single run, not a copy of it.

No checkpoints: a killed multiseed run restarts from scratch (its seed
workdirs are overwritten); use the single-seed loop for long runs that must
resume.
"""
import copy
import json
import os
import time
from typing import Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from mtkd_jax import errors
from mtkd_jax import paths
from mtkd_jax.distill import plugin as distill_plugin
from mtkd_jax.train import hosts
from mtkd_jax.train import loop
from mtkd_jax.train import trainer as trainer_lib
from mtkd_jax.train import writers


_is_better = loop._is_better  # pylint: disable=protected-access


def _seed_slice(tree, i):
  return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def _summary(host, seed_index, now, last_time, steps):
  per_seed = [_seed_slice(m, seed_index) for m in host]
  summary = loop.mean_metrics(per_seed)
  elapsed = max(now - last_time, 1e-9)
  summary["examples_per_sec"] = (
      sum(float(m["num_examples"]) for m in per_seed) / elapsed)
  summary["steps_per_sec"] = steps / elapsed
  return per_seed, summary


def can_vmap(config) -> bool:
  """False for a config that must train one seed per program: distillation
  from teachers (each seed has its own), DML peers or CrossDistil."""
  return not distill_plugin.needs_teachers_or_peers(config)


def train_and_evaluate_seeds(config: ml_collections.ConfigDict, workdir: str,
                             seeds: Sequence[int],
                             seed_workdirs: Optional[Sequence[str]] = None
                             ) -> List[dict]:
  """Trains `config` for every seed at once; tests each seed's best once.

  Args:
    config: an experiment config; its `seed` is replaced by each seed.
    workdir: the parent of the per-seed workdirs `<workdir>/seed_<s>`.
    seeds: distinct ints.
    seed_workdirs: optional per-seed workdirs (same order as `seeds`),
      instead of `<workdir>/seed_<s>`.
  Returns:
    Per seed (in order), the results of `loop.train_and_evaluate`:
    {"best_step", "validation", "test", "select_metric", "steps"}.
  """
  seeds = [int(s) for s in seeds]
  trainer_lib.check_seeds(config, seeds)
  dirs = list(seed_workdirs) if seed_workdirs else [
      os.path.join(workdir, f"seed_{s}") for s in seeds]
  if len(dirs) != len(seeds):
    raise ValueError("seed_workdirs must have one entry per seed.")
  num_seeds = len(seeds)
  hosts.initialize(config.train)
  is_main = jax.process_index() == 0
  for seed, d in zip(seeds, dirs):
    d = paths.path(d)
    d.mkdir(parents=True, exist_ok=True)
    if is_main:
      seed_config = copy.deepcopy(config)
      seed_config.seed = seed
      (d / "config.json").write_text(seed_config.to_json_best_effort(indent=2))
      (d / "results.json").unlink(missing_ok=True)  # stale: we start over

  trainer = trainer_lib.build(config, workdir, seeds=seeds)
  spec, total_steps, tcfg = trainer.spec, trainer.total_steps, config.train
  state = trainer.replicate(trainer.init_state)
  size = sum(x.size for x in jax.tree.leaves(state.params)) // num_seeds
  logging.info("Model %s x %d seeds: %s parameters each.", config.model.name,
               num_seeds, f"{size:,}")

  def run_eval(params, split) -> List[Dict[str, float]]:
    preds = trainer.predict(params, split)  # {key: [N, S, ...]}
    return [trainer.split_metrics(split, {k: v[:, i] for k, v in preds.items()})
            for i in range(num_seeds)]

  writer_list = [writers.MetricWriter(d, resume_step=0,
                                      tensorboard=tcfg.tensorboard)
                 for d in dirs]
  seed_state = [{"best_value": None, "best_step": None, "evals_since_best": 0,
                 "stopped_at": None, "best_params": None, "best_val": None}
                for _ in seeds]

  batches = trainer.train_batches()
  progress = loop._progress(total_steps, 0)  # pylint: disable=protected-access
  if progress is not None:
    progress.set_description(f"train x{num_seeds} seeds")
  step, done = 0, total_steps <= 0
  buffer, buffer_start = [], 1
  last_time, last_step = time.perf_counter(), 0
  try:
    while not done:
      state, metrics = loop.advance(trainer, state, next(batches), step,
                                    first=step == 0)
      step += 1
      buffer.append(metrics)
      is_last, is_eval, is_ckpt, is_log = loop.step_events(step, total_steps,
                                                           tcfg)
      if is_log:
        host = jax.device_get(buffer)
        norms = jax.device_get(trainer.param_norm(state.params))
        now = time.perf_counter()
        losses_now = []
        for i, seed in enumerate(seeds):
          if seed_state[i]["stopped_at"] is not None:
            continue
          per_seed, summary = _summary(host, i, now, last_time,
                                       step - last_step)
          summary.update({k: float(v[i]) for k, v in norms.items()})
          try:
            loop.check_finite(per_seed, buffer_start, spec.task_names)
          except errors.NonFiniteLossError as e:
            raise errors.NonFiniteLossError(f"seed {seed}: {e}") from None
          writer_list[i].write(step, "train", summary)
          losses_now.append(summary["loss"])
        if progress is not None:
          progress.update(step - last_step)
          progress.set_postfix(loss=f"{np.mean(losses_now):.4f}")
        buffer, buffer_start = [], step + 1
        last_time, last_step = now, step
      if is_eval:
        vals = run_eval(state.params, "validation")
        host_params = None
        for i, val in enumerate(vals):
          st = seed_state[i]
          if st["stopped_at"] is not None:
            continue
          writer_list[i].write(step, "validation", val)
          if tcfg.select_metric not in val:
            raise errors.ConfigError(
                f"select_metric {tcfg.select_metric!r} is not a validation "
                f"metric; available: {', '.join(sorted(val))}.")
          value = val[tcfg.select_metric]
          if _is_better(value, st["best_value"], tcfg.select_mode):
            if host_params is None:
              host_params = jax.device_get(state.params)
            st.update(best_value=value, best_step=step, evals_since_best=0,
                      best_params=_seed_slice(host_params, i),
                      best_val=json.loads(json.dumps(val)))
          else:
            st["evals_since_best"] += 1
            if tcfg.patience and st["evals_since_best"] >= tcfg.patience:
              st["stopped_at"] = step
              logging.info("Seed %d: early stop at step %d.", seeds[i], step)
        done = all(st["stopped_at"] is not None for st in seed_state)
        last_time = time.perf_counter()
      done = done or is_last
  finally:
    if progress is not None:
      progress.close()

  best = trainer.replicate(
      trainer_lib.stack_trees([st["best_params"] for st in seed_state]))
  tests = run_eval(best, "test")
  all_results = []
  for i, seed in enumerate(seeds):
    st = seed_state[i]
    writer_list[i].write(st["best_step"], "test", tests[i])
    writer_list[i].close()
    results = {"best_step": st["best_step"], "validation": st["best_val"],
               "test": tests[i], "select_metric": tcfg.select_metric,
               "steps": st["stopped_at"] or step}
    if is_main:
      paths.write_json(paths.path(dirs[i]) / "results.json", results)
    all_results.append(results)
    print(f"seed {seed}: best validation {tcfg.select_metric} at step "
          f"{results['best_step']}; test " + ", ".join(
              f"{k}={v:.4f}" for k, v in sorted(tests[i].items())
              if not k.startswith("gates/")), flush=True)
  return all_results
