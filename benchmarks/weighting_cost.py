r"""Train-step cost of every weighting method relative to EW.

  python -m benchmarks.weighting_cost [--tasks 2,4] [--methods ew,pcgrad,...] [--quick]
      [--embedding-grads dense|rows|auto] [--embedding-optimizer dense|lazy_adam|row_adagrad]

The benchmark workload of docs/benchmarks.md (MMoE, 8 experts [256, 128], towers [64],
batch 1024, Adam) with T = 2 tasks (ctr, cvr) and T = 4 (the same two label
columns twice more, as extra terms). For each method and mode ("param":
gradients of the shared parameters; "rep": of the shared representation) it
prints one JSON line: median step time over clean repeats, the ratio to EW
at the same T, and the arithmetic bound for a gradient-level method in param
mode, (1 + 2T) / 3 (one forward, T backward passes through the shared part).
Targets (issue): param-mode gradient methods <= 1.1 x bound, rep-mode
methods <= 1.2 x EW. `--embedding-grads rows` runs every method (EW
included) with the tables' row gradients (`train.embedding_grads`);
`--embedding-optimizer` sets `optimizer.embedding`. Each configuration
runs in a fresh subprocess unless `--in-process`.
"""
import argparse
import gc
import json
import sys
import time

import numpy as np

from benchmarks import train_throughput as tt


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  p.add_argument("--data", default=tt.DEFAULT_DATA)
  p.add_argument("--generator", default=str(tt.DEFAULT_GENERATOR))
  p.add_argument("--tasks", default="2,4")
  p.add_argument("--methods", default="", help="comma list; default all")
  p.add_argument("--modes", default="param,rep")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--warmup", type=int, default=10, help="untimed steps "
                 "first (a fresh process's first steps run slower: PCGrad param "
                 "T=2 measured 97 ms after 3, 82 ms after 10)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--max-repeats", type=int, default=5)
  p.add_argument("--idle-wait", type=float, default=30.0)
  p.add_argument("--embedding-grads", default="auto",
                 choices=("auto", "dense", "rows"),
                 help="train.embedding_grads (auto: the config default)")
  p.add_argument("--embedding-optimizer", default="dense",
                 help="optimizer.embedding: dense, lazy_adam or row_adagrad")
  p.add_argument("--quick", action="store_true",
                 help="small model and data, 1 repeat (a smoke check)")
  p.add_argument("--in-process", action="store_true",
                 help="measure every method in this process (default: each "
                 "method/mode/T in a fresh subprocess, as a training run "
                 "starts)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def repeated_tasks(spec, train, num_tasks):
  """`spec` with T binary tasks, ctr, cvr, ctr_1, cvr_1, ...: its label
  columns again as extra terms, added to `train`."""
  # pylint: disable=g-import-not-at-top
  import dataclasses
  from mtkd_jax.data import specs
  # pylint: enable=g-import-not-at-top
  base = [t.name for t in spec.tasks]
  names = [f"{t}{'' if k == 0 else '_' + str(k)}"
           for k in range((num_tasks + len(base) - 1) // len(base))
           for t in base][:num_tasks]
  for name in names:
    train[f"labels/{name}"] = train[f"labels/{name.split('_')[0]}"]
  return dataclasses.replace(spec, tasks=tuple(
      specs.TaskSpec(n, "binary", "bce", 1.0) for n in names))


def build(spec, train, method, mode, quick, embedding_grads="auto",
          embedding_optimizer="dense"):
  """(train_fn, state, device batches) for one method/mode/T."""
  # pylint: disable=g-import-not-at-top
  from benchmarks import presets
  from mtkd_jax.data import pipeline
  # pylint: enable=g-import-not-at-top
  config = presets.get_config("mmoe,tiny" if quick else "mmoe")
  config.weighting.name, config.weighting.mode = method, mode
  config.train.embedding_grads = embedding_grads
  config.optimizer.embedding = embedding_optimizer
  config.train.num_devices, config.train.num_steps = 1, 1000
  config.train.batch_size = 256 if quick else 1024
  trainer = presets.build_trainer(config, spec, train)
  it = pipeline.train_batches(train, config.train.batch_size, seed=1)
  batches = [trainer.put(next(it)) for _ in range(tt.NUM_DEVICE_BATCHES)]
  return (trainer.train_step, trainer.replicate(trainer.init_state), batches)


def time_method(fn, state, batches, args, idle):
  import jax  # pylint: disable=g-import-not-at-top
  holder = {"state": state}
  for i in range(args.warmup):
    holder["state"], m = fn(holder["state"], batches[i % len(batches)])
  jax.block_until_ready(m)

  def body(contaminated):
    del contaminated
    t0 = time.perf_counter()
    for i in range(args.steps):
      holder["state"], m = fn(holder["state"], batches[i % len(batches)])
    jax.block_until_ready((holder["state"], m))
    return (time.perf_counter() - t0) / args.steps * 1e3  # ms per step

  return tt.timed_repeats(lambda: None, body, args.repeats, args.max_repeats, idle)


def _isolated(argv, args):
  """Runs each (T, method, mode) as `--child T:method:mode` in a fresh
  process and prints its line with the ratios to that T's EW. In one
  process, a method measured after another ran on the heap the earlier one
  left (PCGrad rep at T = 2: 62 ms after its param mode, 51 ms before it)."""
  # pylint: disable=g-import-not-at-top
  import subprocess
  from mtkd_jax import weighting
  # pylint: enable=g-import-not-at-top
  methods = [m for m in args.methods.split(",") if m] or sorted(weighting.METHODS)
  for num_tasks in [int(t) for t in args.tasks.split(",")]:
    ew_ms = None
    for method in ["ew"] + [m for m in methods if m != "ew"]:
      kind = weighting.get_method(method)
      for mode in args.modes.split(","):
        if not _measured(kind, mode, args):
          continue
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.weighting_cost", *argv,
             "--child", f"{num_tasks}:{method}:{mode}"],
            check=True, stdout=subprocess.PIPE, text=True).stdout
        rec = json.loads(out.strip().splitlines()[-1])
        if method == "ew":
          ew_ms = rec["step_ms"]
        bound = (1 + 2 * num_tasks) / 3
        rec.update(ratio_to_ew=round(rec["step_ms"] / ew_ms, 3),
                   arithmetic_bound=round(bound, 3),
                   ratio_to_bound=round(rec["step_ms"] / ew_ms / bound, 3),
                   isolated=True)
        print(json.dumps(rec), flush=True)
  return 0


def _measured(kind, mode, args):
  if mode == "rep" and (not kind.needs_grads or not kind.supports_rep_grad):
    return False
  # the flat-gradient methods need dense tables; the split-gram ones (MoDo,
  # SDMGrad) dense table gradients
  if kind.needs_split_gram and args.embedding_grads == "rows":
    return False
  return not (args.embedding_optimizer != "dense" and mode == "param"
              and (kind.needs_full_grads or kind.needs_split_gram))


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.quick:
    args.steps, args.repeats, args.max_repeats, args.warmup = 3, 1, 1, 1
    args.idle_wait = 0.0
  if not args.in_process and args.child is None:
    return _isolated(argv, args)
  child = None
  if args.child is not None:
    num_tasks, method, mode = args.child.split(":")
    args.tasks, args.methods, args.modes = num_tasks, method, mode
    child = method
  # pylint: disable=g-import-not-at-top
  import dataclasses
  from mtkd_jax import weighting
  from mtkd_jax.accel import host_memory
  # pylint: enable=g-import-not-at-top
  host_memory.reuse_freed_memory()  # as a run with train.accel on
  import jax  # pylint: disable=g-import-not-at-top
  tt.ensure_data(args.data, args.generator)
  d = tt.load_data(args.data)
  train, _, _ = tt.split_columns(d, 4096 if args.quick else 0)
  base_spec = tt.make_spec(d["vocab_sizes"], d["dense"].shape[1])
  if args.quick:
    base_spec = dataclasses.replace(base_spec, sparse=tuple(
        dataclasses.replace(f, vocab_size=min(f.vocab_size, 200)) for f in base_spec.sparse))
    train["sparse"] = np.minimum(train["sparse"], 199)
  del d
  methods = [m for m in args.methods.split(",") if m] or sorted(weighting.METHODS)
  idle = tt.IdleWaiter(args.idle_wait)
  for num_tasks in [int(t) for t in args.tasks.split(",")]:
    spec = repeated_tasks(base_spec, train, num_tasks)
    ew_ms = None
    order = [child] if child else ["ew"] + [m for m in methods if m != "ew"]
    for method in order:
      kind = weighting.get_method(method)
      for mode in args.modes.split(","):
        if not _measured(kind, mode, args):
          continue
        t0 = time.perf_counter()
        fn, state, batches = build(spec, train, method, mode, args.quick,
                                   args.embedding_grads,
                                   args.embedding_optimizer)
        ms, clean, all_ms, other = time_method(fn, state, batches, args, idle)
        if method == "ew" or child:
          ew_ms = ms  # a child's ratios are filled in by its parent
        bound = (1 + 2 * num_tasks) / 3
        rec = {"method": method, "mode": mode, "tasks": num_tasks,
               "embedding_grads": args.embedding_grads,
               "embedding_optimizer": args.embedding_optimizer,
               "needs_grads": kind.needs_grads, "step_ms": round(ms, 2),
               "ratio_to_ew": round(ms / ew_ms, 3),
               "arithmetic_bound": round(bound, 3),
               "ratio_to_bound": round(ms / ew_ms / bound, 3),
               "clean_repeats": clean, "step_ms_all": all_ms,
               "other_cpu_share": other,
               "wall_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(rec), flush=True)
        del fn, state, batches
        # The next method starts from a clean heap, as a fresh run would.
        gc.collect()
        jax.clear_caches()
        host_memory.release_freed_memory()


if __name__ == "__main__":
  sys.exit(main())
