r"""Train-step time against embedding table size, with row-sparse optimizers.

  python -m benchmarks.embedding_scale [--fields 4] [--rows 10000,10000000]
      [--optimizers lazy_adam,row_adagrad] [--out docs/benchmarks/x.jsonl]
      [--devices 8 --mesh model:8] [--dim 16]

With a row-sparse embedding optimizer (`optimizer.embedding`,
mtkd_jax/accel/row_optim.py) the cost of a step grows with the rows a batch
touches, not the table size: a table of 10^7 rows per field should train at
a step time within 1.3x of 10^4 rows per field.

The workload is the benchmark MMoE of docs/benchmarks.md (8 experts [256, 128], towers
[64], batch 1024, ctr + cvr, EW) on its data, with the first `--fields`
sparse fields (dim 16) and the 13 dense features. With R rows per field the
benchmark's ids (in [0, 10^4)) are mapped by i -> i * 1,000,003 mod R, a
bijection for R = 10^k (1,000,003 is prime to 2 and 5): the batches touch
exactly the same number of distinct rows and compute the same losses, but
spread over the whole table. (26 fields of 10^7 rows would be 16.6 GB of
table alone, plus 33 GB of lazy Adam state; hence `--fields`.)

Each optimizer runs in its own subprocess, which builds every table size
and times them in alternation (repeat r of each size, then repeat r + 1):
on this shared machine whole processes and minutes run at different speeds,
and a size measured in another process or at another time could differ by
30% for that reason alone. It prints one JSON line per size: the median step
time over "clean" repeats (as benchmarks/train_throughput.py: other
processes < 5% of the CPU; it waits up to `--idle-wait` s for quiet before
each repeat), the ratio to the smallest table's, and the median of the
paired per-repeat ratios. `dense` in `--optimizers` is dense Adam
(`train.embedding_grads="dense"`), for contrast.

`--mesh model:8` runs the step on a 2-D mesh (`train.mesh`,
mtkd_jax/train/mesh.py) that splits each table's rows over the `model` axis;
`--devices 8` gives the worker 8 fake CPU devices
(`--xla_force_host_platform_device_count`). The worker checks that every
table is row-sharded and records the rows one device holds (`shard_rows`).
`--dim` sets the embedding dimension (default 16), so that 10^8 rows fit in
memory (1 field of 10^8 rows x dim 4 is a 1.6 GB table).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import train_throughput as tt

ID_MULTIPLIER = 1_000_003


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  p.add_argument("--data", default=tt.DEFAULT_DATA)
  p.add_argument("--generator", default=str(tt.DEFAULT_GENERATOR))
  p.add_argument("--fields", type=int, default=4)
  p.add_argument("--rows", default="10000,10000000",
                 help="rows per field, comma list")
  p.add_argument("--optimizers", default="lazy_adam,row_adagrad",
                 help="optimizer.embedding values (dense = dense Adam)")
  p.add_argument("--batch-size", type=int, default=1024)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--max-repeats", type=int, default=8)
  p.add_argument("--idle-wait", type=float, default=60.0)
  p.add_argument("--dim", type=int, default=tt.EMBED_DIM,
                 help="embedding dimension of every field")
  p.add_argument("--mesh", default="",
                 help="train.mesh of the step, e.g. model:8 (default: one "
                 "device, tables whole)")
  p.add_argument("--devices", type=int, default=0,
                 help="fake CPU devices of the worker (default: JAX's)")
  p.add_argument("--out", help="also append the JSON lines to this file")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def map_ids(ids: np.ndarray, rows: int) -> np.ndarray:
  """The benchmark's ids in [0, 10^4) spread injectively over [0, rows)."""
  if rows == 10_000:
    return ids
  return ((ids.astype(np.int64) * ID_MULTIPLIER) % rows).astype(np.int32)


def worker_env(devices: int) -> dict:
  """The worker's environment: the repository on PYTHONPATH and, with
  `devices` > 0, that many fake CPU devices (set before JAX starts)."""
  env = tt.repo_env()
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(
        flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
  return env


def table_shard_rows(params, model_size: int) -> int:
  """Rows of the embedding tables that one device holds (all tables'
  together).

  Raises:
    AssertionError: with `model_size` > 1, a table that is not split on
      rows over the `model` axis into `model_size` equal shards.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from jax.sharding import PartitionSpec as P
  from mtkd_jax.models import embedding
  from mtkd_jax.train import mesh as mesh_lib
  # pylint: enable=g-import-not-at-top
  total = 0
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    if not embedding.is_table(tuple(str(getattr(k, "key", k)) for k in path), x):
      continue
    rows = {s.data.shape[0] for s in x.addressable_shards}
    if model_size > 1:
      assert x.sharding.spec == P(mesh_lib.MODEL), (path, x.sharding)
      assert rows == {x.shape[0] // model_size}, (path, rows, x.shape)
    total += rows.pop()
  return total


def build(cfg, rows):
  """(train_fn, state, device batches, distinct rows per batch, rows of
  the tables on one device) for `rows`."""
  # pylint: disable=g-import-not-at-top
  import dataclasses
  import jax
  from benchmarks import presets
  from mtkd_jax.data import pipeline
  from mtkd_jax.train import mesh as mesh_lib
  # pylint: enable=g-import-not-at-top
  fields, bs = cfg["fields"], cfg["batch_size"]
  d = tt.load_data(cfg["data"])
  train, _, _ = tt.split_columns(d, 0)
  spec = tt.make_spec(d["vocab_sizes"], d["dense"].shape[1])
  del d
  spec = dataclasses.replace(spec, sparse=tuple(
      dataclasses.replace(f, vocab_size=rows, embed_dim=cfg["dim"])
      for f in spec.sparse[:fields]))
  train["sparse"] = map_ids(train["sparse"][:, :fields], rows)
  config = presets.get_config("mmoe")
  if cfg["optimizer"] == "dense":
    config.train.embedding_grads = "dense"
  else:
    config.optimizer.embedding = cfg["optimizer"]
  # A mesh takes every device (--devices); without one, a single device.
  config.train.num_devices = 0 if cfg["mesh"] else 1
  config.train.mesh, config.train.num_steps = cfg["mesh"], 1000
  config.train.batch_size = bs
  trainer = presets.build_trainer(config, spec, train)
  it = pipeline.train_batches(train, bs, seed=tt.SHUFFLE_SEED)
  host = [next(it) for _ in range(tt.NUM_DEVICE_BATCHES)]
  # As the training loop places it: tables split over `model` if asked.
  fn = trainer.train_step
  state = mesh_lib.place_state(trainer.init_state, trainer.mesh)
  shard_rows = table_shard_rows(state.params, mesh_lib.model_size(trainer.mesh))
  batches = [trainer.put(b) for b in host]
  offsets = np.arange(fields, dtype=np.int64) * rows  # (field, id) pairs
  touched = int(np.median([len(np.unique(b["sparse"] + offsets)) for b in host]))
  jax.block_until_ready((state, batches))
  return fn, state, batches, touched, shard_rows


def run_worker(cfg):
  """All table sizes of one optimizer in one process, timed in alternation
  (repeat r of every size, then repeat r + 1, ...), so that slow phases of
  the shared machine hit every size alike."""
  import jax  # pylint: disable=g-import-not-at-top
  sizes = cfg["rows"]
  runs, recs = {}, {}
  for rows in sizes:
    t0 = time.perf_counter()
    fn, state, batches, touched, shard_rows = build(cfg, rows)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, m = fn(state, batches[0])
    jax.block_until_ready(m)
    first_s = time.perf_counter() - t0
    for i in range(cfg["warmup"]):
      state, m = fn(state, batches[(i + 1) % len(batches)])
    jax.block_until_ready(m)
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    runs[rows] = [fn, state, batches]
    recs[rows] = {
        "optimizer": cfg["optimizer"], "fields": cfg["fields"],
        "rows_per_field": rows, "table_rows": rows * cfg["fields"],
        "embedding_dim": cfg["dim"], "batch_size": cfg["batch_size"],
        "distinct_rows_per_batch": touched,
        "table_gb": round(rows * cfg["fields"] * cfg["dim"] * 4 / 1e9, 3),
        "opt_state_gb": round(opt_bytes / 1e9, 3),
        "mesh": cfg["mesh"], "devices": jax.device_count(),
        "shard_rows": shard_rows,
        "init_s": round(init_s, 2), "first_step_s": round(first_s, 2),
        # ru_maxrss so far: grows with each size built (all stay alive)
        "peak_rss_mib_after_init": round(tt.peak_rss_mib(), 1)}
  idle = tt.IdleWaiter(cfg["idle_wait"])
  times = {rows: [] for rows in sizes}
  other = {rows: [] for rows in sizes}

  def clean_count(rows):
    return sum(o < tt.CLEAN for o in other[rows])

  while (len(other[sizes[0]]) < cfg["max_repeats"] and
         min(clean_count(r) for r in sizes) < cfg["repeats"]):
    for rows in sizes:
      fn, state, batches = runs[rows]
      idle.wait()
      s0 = tt.cpu_snapshot()
      t0 = time.perf_counter()
      for i in range(cfg["steps"]):
        state, m = fn(state, batches[i % len(batches)])
      jax.block_until_ready((state, m))
      times[rows].append(round((time.perf_counter() - t0) / cfg["steps"] * 1e3, 2))
      other[rows].append(round(tt.other_cpu_share(s0, tt.cpu_snapshot()), 3))
      assert np.isfinite(float(m["loss"]))
      runs[rows][1] = state
  out = []
  for rows in sizes:
    clean = [t for t, o in zip(times[rows], other[rows]) if o < tt.CLEAN]
    recs[rows].update(
        step_ms=round(float(np.median(clean or times[rows])), 2),
        step_ms_min=min(times[rows]), clean_repeats=len(clean),
        step_ms_all=times[rows], other_cpu_share=other[rows],
        peak_rss_mib_process=round(tt.peak_rss_mib(), 1),
        jax_version=jax.__version__, loadavg=tt.loadavg())
    out.append(recs[rows])
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    for rec in run_worker(json.loads(args.worker)):
      print(json.dumps(rec), flush=True)
    return 0
  tt.ensure_data(args.data, args.generator)
  env = worker_env(args.devices)
  failed = False
  rows = [int(r) for r in args.rows.split(",")]
  for optimizer in [o for o in args.optimizers.split(",") if o]:
    cfg = dict(vars(args), optimizer=optimizer, rows=rows,
               data=os.path.abspath(args.data))
    for key in ("worker", "out", "generator", "optimizers", "devices"):
      cfg.pop(key)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
      proc = subprocess.run(
          [sys.executable, "-m", "benchmarks.embedding_scale",
           "--worker", json.dumps(cfg)],
          cwd=tt.REPO_ROOT, env=env, stdout=out, stderr=sys.stderr,
          check=False)
      out.seek(0)
      recs = [json.loads(l) for l in out.read().splitlines()
              if l.startswith("{")]
    if proc.returncode or len(recs) != len(rows):
      recs = [{"optimizer": optimizer, "rows_per_field": r,
               "error": f"worker exit code {proc.returncode}"} for r in rows]
      failed = True
    else:
      base = recs[0]
      for rec in recs:
        rec["ratio_to_smallest"] = round(rec["step_ms"] / base["step_ms"], 3)
        # Paired: repeat r of this size over repeat r of the smallest.
        rec["paired_ratio_median"] = round(float(np.median(
            np.asarray(rec["step_ms_all"]) / np.asarray(base["step_ms_all"]))), 3)
    wall = round(time.perf_counter() - t0, 1)
    for rec in recs:
      rec["wall_s_all_sizes"] = wall
      line = json.dumps(rec)
      print(line, flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(line + "\n")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
