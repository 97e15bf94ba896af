r"""Where a step's time goes: per-op times from a `jax.profiler` trace.

  python -m benchmarks.profile_step --model mmoe              # train step
  python -m benchmarks.profile_step --model ple --eval        # eval step, batch 4096
  python -m benchmarks.profile_step --model mmoe --top 40 --steps 20
  python -m benchmarks.profile_step --weighting pcgrad --weighting-mode rep --tasks 4

Builds the benchmark workload (docs/benchmarks.md) exactly as `benchmarks.train_throughput`
does (same model shapes, optimizer, allocator settings, device batches),
times `--steps` steps, then traces `--trace-steps` more with XLA's per-thunk
trace events (`--xla_cpu_enable_xprof_traceme`, set here before JAX starts)
and prints JSON lines: one summary (step ms untraced and traced), then the
`--top` XLA ops by total time per step over all threads (each with its HLO
op name's JAX source, e.g. ".../experts/bd,ndh->bnh/dot_general", read from
the compiled module), then the ops of one traced step in time order with
their thread (`--timeline`; the window runs from one start of the step's
costliest op to the next). Tracing adds overhead; compare ops within a
trace, and take step times from the untraced figure.
"""
import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="mmoe")
  p.add_argument("--eval", action="store_true", help="profile the eval step")
  p.add_argument("--data", default=None, help="default: train_throughput's")
  p.add_argument("--steps", type=int, default=50, help="untimed warm-up and "
                 "timed steps each")
  p.add_argument("--trace-steps", type=int, default=10)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--timeline", action="store_true",
                 help="also print one traced step's ops in time order")
  p.add_argument("--embedding-grads", default="auto",
                 choices=("auto", "dense", "rows"))
  p.add_argument("--accel", default="auto", choices=("auto", "on", "off"),
                 help="train.accel (mtkd_jax/accel)")
  p.add_argument("--weighting", default="ew", help="weighting.name (train)")
  p.add_argument("--weighting-mode", default="param", choices=("param", "rep"))
  p.add_argument("--tasks", type=int, default=2, help="T: ctr, cvr, then "
                 "the same label columns again as extra terms (as "
                 "benchmarks.weighting_cost)")
  p.add_argument("--hlo", default=None, help="also write the compiled HLO "
                 "module's text here (to read an op's operands and fusion)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  flag = "--xla_cpu_enable_xprof_traceme=true"
  if flag not in os.environ.get("XLA_FLAGS", ""):  # before jax initialises
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  # pylint: disable=g-import-not-at-top
  import jax
  from jax._src import profiler as jax_profiler
  from benchmarks import presets
  from benchmarks import train_throughput as tt
  from benchmarks import weighting_cost
  from mtkd_jax.data import pipeline
  from mtkd_jax.accel import switch as accel
  # pylint: enable=g-import-not-at-top
  config = presets.get_config(args.model)
  config.train.accel = args.accel
  accel.setup_process(config)  # as the trainer, before any allocation
  data_path = args.data or tt.DEFAULT_DATA
  tt.ensure_data(data_path, tt.DEFAULT_GENERATOR)
  d = tt.load_data(data_path)
  spec = tt.make_spec(d["vocab_sizes"], d["dense"].shape[1])
  train, test, _ = tt.split_columns(d)
  del d
  if args.tasks != len(spec.tasks):
    spec = weighting_cost.repeated_tasks(spec, train, args.tasks)
  config.train.embedding_grads = args.embedding_grads
  config.weighting.name = args.weighting
  config.weighting.mode = args.weighting_mode
  config.train.num_devices, config.train.num_steps = 1, 205
  trainer = presets.build_trainer(config, spec, train, test)
  bs = 4096 if args.eval else 1024
  state = trainer.replicate(trainer.init_state)
  put = trainer.put
  if args.eval:
    fn = trainer.eval_step
    batches = [put(b) for b in list(pipeline.eval_batches(test, bs))[:10]]
    params = state.params
    run = lambda i: fn(params, batches[i % len(batches)])
    lowered = lambda: fn.lower(params, batches[0])
  else:
    fn = trainer.train_step
    source = pipeline.train_batches(train, bs, seed=tt.SHUFFLE_SEED)
    batches = [put(next(source)) for _ in range(tt.NUM_DEVICE_BATCHES)]
    holder = {"state": state}

    def run(i):
      holder["state"], metrics = fn(holder["state"], batches[i % len(batches)])
      return metrics
    lowered = lambda: fn.lower(holder["state"], batches[0])
  accel.release_freed_memory()

  def steps(n):
    out = [run(i) for i in range(n)]
    jax.block_until_ready(out)

  steps(args.steps)
  t0 = time.perf_counter()
  steps(args.steps)
  step_ms = (time.perf_counter() - t0) / args.steps * 1e3
  trace_dir = tempfile.mkdtemp(prefix="mtkd_profile_")
  jax.profiler.start_trace(trace_dir)
  t0 = time.perf_counter()
  steps(args.trace_steps)
  traced_ms = (time.perf_counter() - t0) / args.trace_steps * 1e3
  jax.profiler.stop_trace()
  path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
  events = []
  for plane in jax_profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for ev in line.events:
        events.append((ev.start_ns, ev.duration_ns, line.name, ev.name))
  skip = re.compile(r"Execute|block_until_ready|trace|PjitFunction|"
                    r"Threadpool|^end: ")
  ops = [e for e in events
         if not skip.search(e[3]) and not e[3].startswith("$")  # python
         and "python" not in e[2]]
  total = collections.Counter()
  count = collections.Counter()
  for _, dur, _, name in ops:
    total[name] += dur
    count[name] += 1
  hlo = lowered().compile().as_text()
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(hlo)
  source = dict(re.findall(r"%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo))
  n = args.trace_steps
  print(json.dumps({"kind": "summary", "model": args.model,
                    "step": "eval" if args.eval else "train", "batch": bs,
                    "weighting": args.weighting, "mode": args.weighting_mode,
                    "tasks": args.tasks,
                    "step_ms": round(step_ms, 2),
                    "traced_step_ms": round(traced_ms, 2),
                    "ops_ms_per_step_all_threads": round(
                        sum(total.values()) / n / 1e6, 2)}))
  for name, dur in total.most_common(args.top):
    print(json.dumps({"kind": "op", "op": name,
                      "ms_per_step": round(dur / n / 1e6, 3),
                      "calls_per_step": round(count[name] / n, 2),
                      "source": source.get(name, "")}))
  if args.timeline:  # one step: between two starts of its costliest op
    once = [k for k, _ in total.most_common() if count[k] == n]
    starts = sorted(e[0] for e in ops if once and e[3] == once[0])
    if len(starts) > 2:
      lo, hi = starts[len(starts) // 2], starts[len(starts) // 2 + 1]
      for start, dur, thread, name in sorted(ops):
        if lo <= start < hi and dur > 100_000:
          print(json.dumps({"kind": "timeline", "t_ms": round((start - lo) / 1e6, 2),
                            "ms": round(dur / 1e6, 2), "thread": thread,
                            "op": name}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
