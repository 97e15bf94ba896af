r"""Throughput of mtkd_jax models on the benchmark workload (docs/benchmarks.md).

  python -m benchmarks.train_throughput --models mmoe,shared_bottom --repeats 3
  python -m benchmarks.train_throughput --models mmoe,ple,shared_bottom
  python -m benchmarks.train_throughput --quick --models mmoe   # smoke check

Runs the benchmark workload (docs/benchmarks.md) through the library's own code
path (`trainer.build` on the `benchmarks/presets.py` config of each
model: the train and eval steps of a run, `pipeline.train_batches`,
`evaluate.predict`, `mtkd_jax.metrics`) and
measures it the way the peer (../shared/bench/PEER.md) measures torch-rechub,
so the figures can be set side by side:

  * every model runs in its own subprocess (peak RSS is per model); the
    parent prints one JSON line per model on stdout (everything else goes to
    stderr) and, with `--out`, writes all lines to a file;
  * quality: one epoch from a fresh model (seed 0) over the train rows in the
    fixed shuffled order of `pipeline.train_batches(seed=1)` (205 steps, the
    last one padded with weight-0 rows), then test AUC / logloss per task;
    `epoch_s` is that epoch's wall time including the first step's compile,
    `epoch_s_after_first_step` the time of the other 204 steps;
  * throughput continues on that model: `--warmup` steps, then repeats of
    `--steps` steps on batches already on the device (the timed region is the
    step alone), examples/s = steps * batch / time, median of "clean" repeats;
    with `--steps-per-call k` (train.steps_per_call) the steps run k per
    compiled call (`Trainer.scan_step` on k batches stacked [B, k, ...]);
  * a repeat is clean when other processes used < 5% of the machine's CPU
    during it (/proc/stat minus /proc/self/stat; this process's threads,
    XLA's included, count as its own); before each repeat the worker waits
    (within `--idle-wait` seconds per model) for quiet, and repeats up to
    `--max-repeats` times to get `--repeats` clean ones;
  * inference: the eval step at `--infer-batch-size` over the test rows;
    input pipeline: host batches/s of `train_batches` + `shard_batch`;
  * compile: the first train step's wall time, and the lowering + compile
    time of a fresh copy of the step via `.lower(...).compile()`;
    recompiles: XLA compilations (counted through `jax.monitoring`) during
    train steps after the first one;
  * peak RSS (`ru_maxrss`, like the peer's) at the end, and the peak so far
    after each phase in `rss_peak_after_mib` (data, init, first_step, epoch,
    aot_compile, train, infer, pipeline), to show which phase sets it.

Models: MMoE (8 experts), PLE (one CGC level, 4 shared + 2 task-specific
experts) and Shared-Bottom as in the benchmark workload, all with [256, 128] experts /
bottom and [64] towers (`benchmarks/presets.py`). `benchmarks/compare_peer.py` runs this next to the peer.

Data: `--data` (default $TMPDIR/mtkd_bench_data.npz); when missing it is
written by the shared generator (`--generator`).
"""
import argparse
import collections
import contextlib
import hashlib
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_GENERATOR = REPO_ROOT.parent / "shared" / "bench" / "make_bench_data.py"
DEFAULT_DATA = os.path.join(tempfile.gettempdir(), "mtkd_bench_data.npz")
EXPECTED_SHA256 = (
    "3910c67fe2bc44a17679da7c57d3d8f4fda583e23ccf676f3c1fe8fdc4ee1db0")
TASKS = ("ctr", "cvr")  # columns 0 and 1 of `labels` / `true_prob`
EMBED_DIM = 16
MODEL_SEED = 0
SHUFFLE_SEED = 1
NUM_DEVICE_BATCHES = 20  # distinct on-device batches the timed steps cycle
CLEAN = 0.05  # a repeat is clean when other processes use < 5% of the CPU
# Eval steps dispatched ahead of the one waited for: the device stays busy,
# and memory stays bounded (with all of a 100-batch repeat in flight at once
# the inference phase added ~100 MB to PLE's peak RSS, against ~35 MB for
# 20; the peer holds one batch's output at a time).
INFER_IN_FLIGHT = 4
# jax._src.dispatch.BACKEND_COMPILE_EVENT: one event per XLA compilation.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

DEFAULTS = dict(models="mmoe,shared_bottom", repeats=3, max_repeats=5,
                steps=200, warmup=20, batch_size=1024, infer_batch_size=4096,
                infer_batches=20, pipeline_batches=200, parallel="jit",
                num_devices=0, epoch=True, max_train_rows=0, idle_wait=60.0,
                weighting="ew", embedding_grads="auto", accel="auto",
                compute_dtype="float32", steps_per_call=1)
QUICK = dict(repeats=1, max_repeats=1, steps=20, warmup=3, infer_batches=4,
             pipeline_batches=20, epoch=False, max_train_rows=20_000,
             idle_wait=0.0)


# ------------------------------------------------------------------- data


def content_sha256(d):
  """SHA-256 of (name, dtype, shape, bytes) of sparse, dense, labels.

  Copied from ../shared/bench/make_bench_data.py (and peer_bench.py), so the
  hash matches the generator's and the peer's `content_sha256`.
  """
  h = hashlib.sha256()
  for k in ("sparse", "dense", "labels"):
    a = np.ascontiguousarray(d[k])
    h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() +
             a.tobytes())
  return h.hexdigest()


def load_data(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def ensure_data(path, generator):
  """Writes the workload to `path` with the shared generator if missing."""
  if os.path.exists(path):
    return
  print(f"# {path} missing; generating it with {generator}", file=sys.stderr)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  subprocess.run([sys.executable, str(generator), path], check=True,
                 stdout=sys.stderr)


def make_spec(vocab_sizes, num_dense):
  """The benchmark's DatasetSpec: C0..C25 (dim 16), I0..I12, ctr and cvr."""
  from mtkd_jax.data import specs  # pylint: disable=g-import-not-at-top
  return specs.DatasetSpec(
      name="mtkd_bench",
      sparse=tuple(specs.SparseField(f"C{i}", int(v), embed_dim=EMBED_DIM)
                   for i, v in enumerate(vocab_sizes)),
      dense=tuple(specs.DenseField(f"I{i}") for i in range(num_dense)),
      tasks=tuple(specs.TaskSpec(t, "binary", "bce", 1.0) for t in TASKS))


def split_columns(d, max_train_rows=0):
  """(train, test, test_true_prob) columns in the batch layout of specs.py.

  Train rows are [0, n_train) (only the first `max_train_rows` if > 0), test
  rows [n_train, N).
  """
  n_train = int(d["n_train"])

  def columns(rows):
    cols = {"sparse": np.ascontiguousarray(d["sparse"][rows], np.int32),
            "dense": np.ascontiguousarray(d["dense"][rows], np.float32)}
    for j, task in enumerate(TASKS):
      cols[f"labels/{task}"] = np.ascontiguousarray(
          d["labels"][rows, j], np.float32)
    cols["weights"] = np.ones(len(cols["sparse"]), np.float32)
    return cols

  train_end = min(n_train, max_train_rows) if max_train_rows else n_train
  test_rows = slice(n_train, None)
  true_prob = {t: np.ascontiguousarray(d["true_prob"][test_rows, j])
               for j, t in enumerate(TASKS)}
  return columns(slice(0, train_end)), columns(test_rows), true_prob


# ------------------------------------------------------- machine load


def cpu_snapshot():
  """(wall s, machine busy jiffies, this process's jiffies, all its threads)."""
  with open("/proc/stat") as f:
    v = [int(x) for x in f.readline().split()[1:]]
  busy = sum(v) - v[3] - v[4]  # minus idle, iowait
  with open("/proc/self/stat") as f:
    st = f.read().rsplit(")", 1)[1].split()
  return time.perf_counter(), busy, int(st[11]) + int(st[12])  # utime + stime


def other_cpu_share(s0, s1):
  """Share of the machine's CPU used by other processes between snapshots."""
  cap = (s1[0] - s0[0]) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
  return max(0.0, (s1[1] - s0[1] - (s1[2] - s0[2])) / max(cap, 1e-9))


def repo_env():
  """This process's environment with the repository first on PYTHONPATH,
  for the benchmark worker subprocesses (`python -m benchmarks....`)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def loadavg():
  with open("/proc/loadavg") as f:
    return f.read().strip()


class IdleWaiter:
  """Waits, within a budget of seconds, for other processes to go quiet."""

  def __init__(self, budget):
    self.budget, self.waited = float(budget), 0.0

  def wait(self):
    while self.waited < self.budget:
      s0 = cpu_snapshot()
      time.sleep(1.0)
      if other_cpu_share(s0, cpu_snapshot()) < CLEAN:
        return
      self.waited += 1.0


def timed_repeats(prime, body, repeats, max_repeats, idle):
  """Runs `body` until `repeats` clean repeats exist (or `max_repeats` runs).

  Args:
    prime: called untimed before each repeat (after the idle wait).
    body: `body(contaminated) -> rate`; may stop early when the callable
      `contaminated()` says other processes already took >= CLEAN.
    repeats: clean repeats wanted.
    max_repeats: most repeats run.
    idle: an IdleWaiter.
  Returns:
    (median over clean repeats, or over all if none is clean; number of clean
    repeats; all rates; other processes' CPU share per repeat).
  """
  rates, other = [], []
  while not (len(other) >= max(max_repeats, 1) or (
      len(other) >= repeats and sum(o < CLEAN for o in other) >= repeats)):
    idle.wait()
    prime()
    s0 = cpu_snapshot()
    rate = body(lambda: other_cpu_share(s0, cpu_snapshot()) >= CLEAN)
    other.append(other_cpu_share(s0, cpu_snapshot()))
    rates.append(rate)
  clean = [r for r, o in zip(rates, other) if o < CLEAN]
  return (float(np.median(clean or rates)), len(clean),
          [round(r, 2) for r in rates], [round(o, 3) for o in other])


def peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class CompileLog:
  """Records every XLA compilation (a `jax.monitoring` duration listener)."""

  def __init__(self):
    self.events = []  # (fun_name, seconds, watched)
    self.watching = False

  def __call__(self, event, duration, **kwargs):
    if event == BACKEND_COMPILE_EVENT:
      self.events.append((kwargs.get("fun_name", "?"), duration, self.watching))

  @contextlib.contextmanager
  def watch(self):
    """Compilations inside this block count as recompiles of the train step."""
    self.watching = True
    try:
      yield
    finally:
      self.watching = False

  def watched(self):
    return [name for name, _, w in self.events if w]


# ----------------------------------------------------------------- worker


def workload_splits(d, spec, max_train_rows=0):
  """(Splits, test true_prob) of the workload: train rows, test rows (also
  the validation split, which the benchmark does not use), checked against
  `spec`; extras hold the test rows' Bayes probabilities."""
  from mtkd_jax.data import columns as columns_lib  # pylint: disable=g-import-not-at-top
  from mtkd_jax.data import specs  # pylint: disable=g-import-not-at-top
  train, test, true_prob = split_columns(d, max_train_rows)
  columns_lib.validate_columns(spec, train, "train")
  columns_lib.validate_columns(spec, test, "test")
  extras = {"test": {f"bayes_prob/{t}": true_prob[t] for t in TASKS}}
  return specs.Splits(spec, train, test, test, extras), true_prob


def worker_config(cfg):
  """The preset config of `cfg["model"]` with the worker's settings."""
  from benchmarks import presets  # pylint: disable=g-import-not-at-top
  config = presets.get_config(cfg["model"])
  config.weighting.name = cfg["weighting"]
  config.train.embedding_grads = cfg["embedding_grads"]
  config.train.compute_dtype = cfg["compute_dtype"]
  config.train.accel = cfg["accel"]
  config.train.batch_size = cfg["batch_size"]
  config.train.steps_per_call = cfg["steps_per_call"]
  config.train.parallel = cfg["parallel"]
  config.train.num_devices = cfg["num_devices"]
  config.eval.batch_size = cfg["infer_batch_size"]
  return config


class Phases:
  """The worker's record, its peak RSS after each phase, and the hand-back
  of freed memory to the OS where train/loop.py does it."""

  def __init__(self, rec, reuse):
    from mtkd_jax.accel import switch as accel  # pylint: disable=g-import-not-at-top
    self.rec, self.rss = rec, {}
    rec["rss_peak_after_mib"] = self.rss  # filled in phase by phase
    self._release = accel.release_freed_memory if reuse else None

  def release(self):
    if self._release is not None:
      self._release()

  def done(self, name):
    self.rss[name] = round(peak_rss_mib(), 1)


def load_workload(cfg, rec, phases):
  """The workload's Splits and test true_prob; records the data's hash."""
  d = load_data(cfg["data"])
  rec["data_sha256"] = content_sha256(d)
  spec = make_spec(d["vocab_sizes"], d["dense"].shape[1])
  splits, true_prob = workload_splits(d, spec, cfg["max_train_rows"])
  del d
  phases.release()  # after loading the data, as train/loop.py
  rec["rss_after_data_load_mib"] = round(peak_rss_mib(), 1)
  phases.done("data")
  return splits, true_prob


def init_trainer(config, splits, rec, phases):
  """(trainer, replicated initial state); records init time and sizes."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtkd_jax.train import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  trainer = trainer_lib.build(config, splits=splits)
  state = trainer.replicate(trainer.init_state)
  jax.block_until_ready(state)
  phases.release()
  rec["init_s"] = round(time.perf_counter() - t0, 3)
  phases.done("init")
  params = trainer.init_state.params
  total = sum(int(x.size) for x in jax.tree.leaves(params))
  embedding = sum(int(x.size)
                  for x in jax.tree.leaves(params.get("embedding", {})))
  tx = trainer.tx
  rec.update(params=total, params_dense=total - embedding,
             params_embedding=embedding, devices=int(trainer.mesh.devices.size),
             row_grads=bool(trainer.step_cfg.row_grads),
             table_optimizer=tx.rows.name if hasattr(tx, "rows") else "optax")
  return trainer, state


def host_batches(trainer, start_step=0):
  """The benchmark's fixed training order: shuffle seed SHUFFLE_SEED."""
  from mtkd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.train_batches(trainer.splits.train,
                                trainer.config.train.batch_size,
                                seed=SHUFFLE_SEED, start_step=start_step)


def first_step_and_epoch(trainer, state, cfg, rec, phases, compile_log,
                         true_prob):
  """The first (compiling) step and, with `cfg["epoch"]`, the rest of one
  epoch and the test quality. Returns (state, the first batch)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtkd_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from mtkd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batches = pipeline.prefetch(host_batches(trainer), trainer.put)
  s0 = cpu_snapshot()
  t_epoch = time.perf_counter()
  first_batch = next(batches)
  n_compiles = len(compile_log.events)
  t0 = time.perf_counter()
  state, metrics = trainer.train_step(state, first_batch)
  jax.block_until_ready((state, metrics))
  t1 = time.perf_counter()
  rec["first_step_s"] = round(t1 - t0, 3)
  rec["first_step_backend_compile_s"] = round(
      sum(s for _, s, _ in compile_log.events[n_compiles:]), 3)
  phases.release()
  phases.done("first_step")
  test = trainer.splits.test
  if not cfg["epoch"]:
    rec.update(epoch_s=None, epoch_steps=0)
    for t in TASKS:
      rec[f"auc_{t}"] = rec[f"logloss_{t}"] = None
      rec[f"bayes_auc_{t}"] = metrics_lib.auc(
          test[f"labels/{t}"], true_prob[t], test["weights"])
    return state, first_batch
  per_epoch = trainer.total_steps
  step_metrics = [metrics]
  with compile_log.watch():
    for _ in range(per_epoch - 1):
      state, metrics = trainer.train_step(state, next(batches))
      step_metrics.append(metrics)
    jax.block_until_ready((state, metrics))
  t2 = time.perf_counter()
  losses = [float(m["loss"]) for m in jax.device_get(step_metrics)]
  rec.update(
      epoch_s=round(t2 - t_epoch, 3),
      epoch_s_after_first_step=round(t2 - t1, 3), epoch_steps=per_epoch,
      epoch_mean_train_loss=float(np.mean(losses)),
      epoch_other_procs_cpu_share=round(other_cpu_share(s0, cpu_snapshot()), 3))
  t0 = time.perf_counter()
  quality = trainer.evaluate(state.params, "test")
  rec["eval_s"] = round(time.perf_counter() - t0, 3)
  for t in TASKS:
    rec[f"auc_{t}"] = quality[f"{t}/auc"]
    rec[f"logloss_{t}"] = quality[f"{t}/logloss"]
    rec[f"pcoc_{t}"] = quality[f"{t}/pcoc"]
    rec[f"bayes_auc_{t}"] = quality[f"{t}/bayes_auc"]
  phases.done("epoch")
  return state, first_batch


def aot_compile(trainer, state, first_batch, rec, phases):
  """Lowering + compile time of a fresh copy of the train step."""
  fresh = trainer.new_train_step()
  if hasattr(fresh, "lower"):
    t0 = time.perf_counter()
    lowered = fresh.lower(state, first_batch, *trainer.distill.step_args)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    rec.update(compile_s=round(t2 - t0, 3), lower_s=round(t1 - t0, 3),
               compile_method="fresh_step.lower().compile()")
  else:
    rec.update(compile_s=rec["first_step_backend_compile_s"],
               compile_method="backend compile during the first call")
  phases.release()
  phases.done("aot_compile")


def device_calls(trainer, k):
  """The timed steps' batches, on the devices: NUM_DEVICE_BATCHES host
  batches (k = 1), or enough stacks of k ([B, k, ...], for `scan_step`)
  to hold as many (at least 2)."""
  from mtkd_jax.train import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  source = host_batches(trainer, start_step=trainer.total_steps)
  if k == 1:
    return [trainer.put(next(source)) for _ in range(NUM_DEVICE_BATCHES)]
  return [trainer.put(trainer_lib.stack_batches([next(source)
                                                 for _ in range(k)]))
          for _ in range(max(2, -(-NUM_DEVICE_BATCHES // k)))]


def train_throughput(trainer, state, cfg, rec, phases, compile_log, idle):
  """Examples/s of the train step alone on pre-transferred batches;
  returns the trained params."""
  import jax  # pylint: disable=g-import-not-at-top
  bs = trainer.config.train.batch_size
  k = cfg["steps_per_call"]
  step_fn = trainer.train_step if k == 1 else trainer.scan_step
  device_batches = device_calls(trainer, k)
  jax.block_until_ready(device_batches)
  holder = {"state": state, "i": 0}
  del state

  def train_steps(count, contaminated=None):
    """Runs calls until `count` steps (k per call) are done."""
    st, m = holder["state"], None
    done = 0
    while done < count:
      st, m = step_fn(st, device_batches[holder["i"] % len(device_batches)])
      holder["i"] += 1
      done += k
      if (contaminated is not None and holder["i"] % max(1, 25 // k) == 0
          and done < count and contaminated()):
        break
    jax.block_until_ready((st, m))
    holder["state"] = st
    return done

  if k > 1:  # compiles the k-step call, which is not a recompile
    t0 = time.perf_counter()
    train_steps(k)
    rec["first_call_s"] = round(time.perf_counter() - t0, 3)

  def train_body(contaminated):
    t0 = time.perf_counter()
    done = train_steps(cfg["steps"], contaminated)
    return done * bs / (time.perf_counter() - t0)

  with compile_log.watch():
    train_steps(cfg["warmup"])
    med, n_clean, rates, other = timed_repeats(
        lambda: train_steps(1), train_body, cfg["repeats"],
        cfg["max_repeats"], idle)
  rec.update(train_examples_per_sec=round(med, 1),
             train_steps_per_sec=round(med / bs, 3),
             train_step_ms=round(bs / med * 1e3, 2),
             train_clean_repeats=n_clean, train_examples_per_sec_all=rates,
             train_other_procs_cpu_share=other)
  recompiled = compile_log.watched()
  rec["recompiles_after_first_step"] = len(recompiled)
  rec["recompiled_functions"] = sorted(set(recompiled))
  if hasattr(step_fn, "_cache_size"):
    # Executables held by the jitted step; 1 unless it recompiled.
    rec["train_fn_cache_size"] = (
        step_fn._cache_size())  # pylint: disable=protected-access
  del device_batches
  phases.done("train")
  params = holder["state"].params
  del holder  # the optimizer state (~50 MB for MMoE / PLE): not needed now
  phases.release()
  return params


def infer_throughput(trainer, params, cfg, rec, phases, idle):
  """Examples/s of the eval step at the inference batch size."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtkd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  infer_bs, eval_fn = trainer.config.eval.batch_size, trainer.eval_step
  infer_host = list(pipeline.eval_batches(trainer.splits.test, infer_bs))
  full = [b for b in infer_host if b["weights"].all()]
  infer_batches = [trainer.put(b) for b in (full or infer_host)]
  jax.block_until_ready(infer_batches)
  for b in infer_batches[:3]:
    jax.block_until_ready(eval_fn(params, b))

  def infer_body(contaminated):
    del contaminated
    t0 = time.perf_counter()
    in_flight = collections.deque()
    for i in range(cfg["infer_batches"]):
      in_flight.append(eval_fn(params, infer_batches[i % len(infer_batches)]))
      if len(in_flight) > INFER_IN_FLIGHT:
        jax.block_until_ready(in_flight.popleft())
    jax.block_until_ready(list(in_flight))
    return cfg["infer_batches"] * infer_bs / (time.perf_counter() - t0)

  med, n_clean, rates, other = timed_repeats(
      lambda: jax.block_until_ready(eval_fn(params, infer_batches[0])),
      infer_body, cfg["repeats"], cfg["max_repeats"], idle)
  rec.update(infer_examples_per_sec=round(med, 1), infer_clean_repeats=n_clean,
             infer_examples_per_sec_all=rates,
             infer_other_procs_cpu_share=other)
  phases.done("infer")


def pipeline_throughput(trainer, cfg, rec, phases, idle):
  """Host batches/s of the input pipeline alone (train_batches + put)."""
  import jax  # pylint: disable=g-import-not-at-top
  host_iter = host_batches(trainer)

  def pipeline_body(contaminated):
    del contaminated
    t0 = time.perf_counter()
    out = [trainer.put(next(host_iter)) for _ in range(cfg["pipeline_batches"])]
    jax.block_until_ready(out)
    return cfg["pipeline_batches"] / (time.perf_counter() - t0)

  med, n_clean, rates, other = timed_repeats(
      lambda: None, pipeline_body, cfg["repeats"], cfg["max_repeats"], idle)
  rec.update(pipeline_batches_per_sec=round(med, 1),
             pipeline_clean_repeats=n_clean,
             pipeline_batches_per_sec_all=rates,
             pipeline_to_step_ratio=round(med / rec["train_steps_per_sec"], 2))
  phases.done("pipeline")


def run_worker(cfg):
  """Benchmarks one model (`cfg["model"]`); returns its JSON record."""
  import jax  # pylint: disable=g-import-not-at-top
  from mtkd_jax.accel import switch as accel  # pylint: disable=g-import-not-at-top

  config = worker_config(cfg)
  # As the trainer does (train.accel), before any allocation.
  accel.setup_process(config)
  reuse = accel.enabled(config)
  compile_log = CompileLog()
  jax.monitoring.register_event_duration_secs_listener(compile_log)
  idle = IdleWaiter(cfg["idle_wait"])
  rec = {"model": cfg["model"], "parallel": cfg["parallel"],
         "weighting": cfg["weighting"], "accel": reuse,
         "loadavg_start": loadavg(), "compute_dtype": cfg["compute_dtype"]}
  phases = Phases(rec, reuse)
  splits, true_prob = load_workload(cfg, rec, phases)
  trainer, state = init_trainer(config, splits, rec, phases)
  state, first_batch = first_step_and_epoch(trainer, state, cfg, rec, phases,
                                            compile_log, true_prob)
  phases.release()  # as train/loop.py after an evaluation
  aot_compile(trainer, state, first_batch, rec, phases)
  del first_batch
  params = train_throughput(trainer, state, cfg, rec, phases, compile_log, idle)
  del state
  infer_throughput(trainer, params, cfg, rec, phases, idle)
  pipeline_throughput(trainer, cfg, rec, phases, idle)
  rec.update(
      batch_size=cfg["batch_size"], infer_batch_size=cfg["infer_batch_size"],
      steps_per_call=cfg["steps_per_call"],
      steps=cfg["steps"], warmup=cfg["warmup"], repeats=cfg["repeats"],
      n_train_rows=len(splits.train["weights"]),
      n_test_rows=len(splits.test["weights"]), idle_wait_s=idle.waited,
      peak_rss_mib=round(peak_rss_mib(), 1), jax_version=jax.__version__,
      backend=jax.default_backend(), cpu_count=os.cpu_count(),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      python=platform.python_version(),
      data_matches_benchmark=rec["data_sha256"] == EXPECTED_SHA256,
      loadavg_end=loadavg())
  return rec


# ----------------------------------------------------------------- driver


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=DEFAULT_DATA)
  p.add_argument("--generator", default=str(DEFAULT_GENERATOR))
  p.add_argument("--models", help="comma list of registry model names "
                 f"(default {DEFAULTS['models']})")
  p.add_argument("--repeats", type=int, help="clean timed repeats wanted")
  p.add_argument("--max-repeats", type=int,
                 help="most timed repeats when the machine is busy")
  p.add_argument("--steps", type=int, help="train steps per timed repeat")
  p.add_argument("--warmup", type=int, help="untimed train steps first")
  p.add_argument("--batch-size", type=int)
  p.add_argument("--steps-per-call", type=int,
                 help="train.steps_per_call: timed steps per compiled call "
                 "(default 1; k > 1 scans k steps in one call, for "
                 "launch-bound steps on a GPU/TPU)")
  p.add_argument("--infer-batch-size", type=int)
  p.add_argument("--infer-batches", type=int, help="eval steps per repeat")
  p.add_argument("--pipeline-batches", type=int,
                 help="host batches per input-pipeline repeat")
  p.add_argument("--parallel", choices=("jit", "pmap"))
  p.add_argument("--num-devices", type=int, help="0 = all devices")
  p.add_argument("--weighting", help="multi-task weighting method name "
                 "(default ew: fixed task weights, the plain BCE sum)")
  p.add_argument("--embedding-grads", choices=("auto", "dense", "rows"),
                 help="train.embedding_grads (default auto)")
  p.add_argument("--compute-dtype", choices=("float32", "bfloat16"),
                 help="train.compute_dtype: bfloat16 runs the forward and "
                 "backward passes in bf16 on a cast copy of the float32 "
                 "params, inference too (default float32, the peer's)")
  p.add_argument("--accel", choices=("auto", "on", "off"),
                 help="train.accel: the CPU speed work (mtkd_jax/accel; "
                 "default auto: on for the CPU backend)")
  p.add_argument("--epoch", action=argparse.BooleanOptionalAction,
                 help="one-epoch quality run (default on)")
  p.add_argument("--max-train-rows", type=int, help="0 = all train rows")
  p.add_argument("--idle-wait", type=float,
                 help="per model: seconds it may wait for a quiet machine")
  p.add_argument("--quick", action="store_true",
                 help="smoke check: " + ", ".join(
                     f"{k}={v}" for k, v in QUICK.items()))
  p.add_argument("--out", help="also write all JSON lines to this file")
  p.add_argument("--worker", help=argparse.SUPPRESS)  # JSON settings
  p.add_argument("--json-out", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  settings = dict(DEFAULTS)
  if args.quick:
    settings.update(QUICK)
  for key in DEFAULTS:
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  settings["data"] = os.path.abspath(args.data)
  return args, settings


def worker_main(args):
  cfg = json.loads(args.worker)
  try:
    rec = run_worker(cfg)
    code = 0
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    rec = {"model": cfg["model"], "parallel": cfg["parallel"],
           "error": f"{type(e).__name__}: {e}"}
    code = 1
  with open(args.json_out, "w") as f:
    json.dump(rec, f)
  return code


def main(argv=None):
  args, settings = parse_args(argv)
  if args.worker:
    return worker_main(args)
  ensure_data(settings["data"], args.generator)
  print(f"# data {settings['data']}; loadavg {loadavg()}", file=sys.stderr)
  env = repo_env()
  lines, failed = [], False
  for name in [m.strip() for m in settings["models"].split(",") if m.strip()]:
    idle = IdleWaiter(settings["idle_wait"])
    idle.wait()  # let a busy neighbour finish before the worker starts
    cfg = dict(settings, model=name)
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "result.json")
      t0 = time.perf_counter()
      proc = subprocess.run(
          [sys.executable, "-m", "benchmarks.train_throughput",
           "--worker", json.dumps(cfg), "--json-out", out],
          cwd=REPO_ROOT, env=env, stdout=sys.stderr, check=False)
      if os.path.exists(out):
        with open(out) as f:
          rec = json.load(f)
      else:
        rec = {"model": name, "parallel": settings["parallel"],
               "error": f"worker exit code {proc.returncode}"}
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["pre_start_idle_wait_s"] = idle.waited
    failed = failed or proc.returncode != 0 or "error" in rec
    line = json.dumps(rec)
    print(line, flush=True)
    lines.append(line)
    if args.out:
      with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
