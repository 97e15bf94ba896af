r"""Paired step times: variants of one train step, alternated in one process.

  python -m benchmarks.step_ab --model mmoe --variants base,accel=off
  python -m benchmarks.step_ab --variants base,accel=off --rounds 30 --block 10
  python -m benchmarks.step_ab --model ple --variants base,embedding_grads=dense --eval

The machine's noise (slow episodes of a few seconds, docs/benchmarks.md) is
larger than many single changes, so two processes timed one after the other
compare badly. This compiles one train step per variant on the benchmark
workload of docs/benchmarks.md (as `benchmarks.train_throughput` builds it), then times blocks of
`--block` steps, variant after variant, for `--rounds` rounds (the order
reversed every other round), and prints one JSON line per variant: the
median, lower quartile and minimum block time (ms per step), and the median
over rounds of its difference to the first variant's block of that round.
With `--eval`, each round also times `--eval-block` eval steps at batch
4096 per variant (the inference workload), reported as `eval_*`.

A variant is `base` or comma-free `key=value` pairs joined by `+`, each a
`train.*` config entry, e.g. `accel=off` (plain optax and XLA, no native
kernels) or `embedding_grads=dense`.
"""
import argparse
import functools
import itertools
import json
import statistics
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="mmoe")
  p.add_argument("--variants", default="base,accel=off")
  p.add_argument("--rounds", type=int, default=30)
  p.add_argument("--block", type=int, default=10, help="steps per block")
  p.add_argument("--warmup", type=int, default=20)
  p.add_argument("--eval", action="store_true",
                 help="also time the eval step at batch 4096")
  p.add_argument("--eval-block", type=int, default=4,
                 help="eval steps per block")
  p.add_argument("--data", default=None)
  return p.parse_args(argv)


def parse_variant(text):
  """{key: value} of a variant ("base": {})."""
  if text == "base":
    return {}
  out = {}
  for item in text.split("+"):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"step_ab: bad variant {text!r}; want base or "
                       "key=value[+key=value]")
    out[key] = value
  return out


def summarise(times, base_times):
  diffs = [a - b for a, b in zip(times, base_times)]
  ordered = sorted(times)
  return {"median_ms": round(statistics.median(times), 2),
          "q25_ms": round(ordered[len(ordered) // 4], 2),
          "min_ms": round(min(times), 2),
          "median_diff_to_first_ms": round(statistics.median(diffs), 2)}


def main(argv=None):
  args = parse_args(argv)
  # pylint: disable=g-import-not-at-top
  import jax
  from benchmarks import presets
  from benchmarks import train_throughput as tt
  from mtkd_jax.accel import host_memory
  from mtkd_jax.data import pipeline
  from mtkd_jax.train import parallel
  # pylint: enable=g-import-not-at-top
  host_memory.reuse_freed_memory()  # as train/loop.py
  data_path = args.data or tt.DEFAULT_DATA
  tt.ensure_data(data_path, tt.DEFAULT_GENERATOR)
  d = tt.load_data(data_path)
  spec = tt.make_spec(d["vocab_sizes"], d["dense"].shape[1])
  train, _, _ = tt.split_columns(d)  # eval batches: train rows, any will do
  del d
  mesh = parallel.make_mesh(1)
  put = functools.partial(parallel.shard_batch, mode="jit", mesh=mesh)
  source = pipeline.train_batches(train, 1024, seed=tt.SHUFFLE_SEED)
  batches = [put(next(source)) for _ in range(tt.NUM_DEVICE_BATCHES)]
  eval_batches = []
  if args.eval:
    eval_batches = [put(b) for b in
                    itertools.islice(pipeline.eval_batches(train, 4096), 4)]

  names = [v for v in args.variants.split(",") if v]
  runs = {}
  for name in names:
    overrides = parse_variant(name)
    config = presets.get_config(args.model)
    for key, value in overrides.items():
      if key not in config.train:
        raise SystemExit(f"step_ab: unknown train config key {key!r}")
      config.train[key] = type(config.train[key])(value)
    config.train.num_devices, config.train.num_steps = 1, 205
    trainer = presets.build_trainer(config, spec, train)
    state = trainer.replicate(trainer.init_state)
    fn, eval_fn = trainer.train_step, trainer.eval_step
    compiled = fn.lower(state, batches[0]).compile()
    compiled_eval = (eval_fn.lower(state.params, eval_batches[0]).compile()
                     if eval_batches else None)
    runs[name] = {"fn": compiled, "eval": compiled_eval, "state": state,
                  "i": 0, "times": [], "eval_times": []}
  host_memory.release_freed_memory()

  def steps(run, n):
    st, m = run["state"], None
    for _ in range(n):
      st, m = run["fn"](st, batches[run["i"] % len(batches)])
      run["i"] += 1
    jax.block_until_ready((st, m))
    run["state"] = st

  def evals(run, n):
    out = None
    for i in range(n):
      out = run["eval"](run["state"].params, eval_batches[i % len(eval_batches)])
    jax.block_until_ready(out)

  for run in runs.values():
    steps(run, args.warmup)
    if eval_batches:
      evals(run, 2)
  for r in range(args.rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      t0 = time.perf_counter()
      steps(runs[name], args.block)
      runs[name]["times"].append(
          (time.perf_counter() - t0) / args.block * 1e3)
      if eval_batches:
        t0 = time.perf_counter()
        evals(runs[name], args.eval_block)
        runs[name]["eval_times"].append(
            (time.perf_counter() - t0) / args.eval_block * 1e3)
  first = runs[names[0]]
  for name in names:
    rec = {"model": args.model, "variant": name, "rounds": args.rounds,
           "block": args.block,
           **summarise(runs[name]["times"], first["times"])}
    if eval_batches:
      rec.update({f"eval_{k}": v for k, v in summarise(
          runs[name]["eval_times"], first["eval_times"]).items()},
                 eval_batch=4096, eval_block=args.eval_block)
    print(json.dumps(rec), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
