r"""Runs a sweep of configs and seeds; resumable, optionally in parallel.

  python -m experiments.ablation --config configs/mmoe_synthetic.py \
      --sweep configs/sweeps/mmoe_synthetic.py \
      --workdir /tmp/mtkd/ablations/mmoe_synthetic [--parallel 2] \
      [--vmap_seeds] [--config.train.num_epochs=10 ...]
  python -m experiments.report /tmp/mtkd/ablations/mmoe_synthetic

Each run of the sweep (`get_sweep()` of the sweep file: dicts of dotted
config keys -> values) trains in `<workdir>/<run name>` and adds one line to
`<workdir>/results.jsonl` when it finishes. `--config.k=v` overrides apply to
every run (the sweep's own value wins for a key it sets). Every run's
overrides are applied to a locked copy of the config before anything starts,
so a misspelt key or an unknown model fails at once, naming the run.
Start the same command again to finish a killed sweep: finished runs are
skipped and a killed run resumes from its checkpoint.
`--parallel N` runs N `experiments.run` subprocesses at a time, each with
its share of the GPUs / TPU chips (mtkd_jax/ablation/devices.py);
`--vmap_seeds` trains the seeds of each variant as one vmapped program
(mtkd_jax/train/multiseed.py; a killed group restarts from scratch).
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mtkd_jax import errors
from mtkd_jax import logs
from mtkd_jax import sweeps
from mtkd_jax.ablation import driver

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Base experiment config (configs/<exp>.py[:arg]).",
    lock_config=True)
_SWEEP = flags.DEFINE_string(
    "sweep", None, "Sweep file (configs/sweeps/<name>.py[:arg]) defining "
    "get_sweep().")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Sweep directory: one workdir per run, results.jsonl.")
_PARALLEL = flags.DEFINE_integer(
    "parallel", 1, "1: runs one after another in this process; N > 1: N "
    "`experiments.run` subprocesses at a time.")
_VMAP_SEEDS = flags.DEFINE_bool(
    "vmap_seeds", False, "Train runs that differ only in seed as one "
    "vmapped program.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Check the sweep and list its runs; train nothing.")
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_orbax(logging.WARNING)
  flag = flags.FLAGS["config"]
  try:
    runs = sweeps.load_sweep(_SWEEP.value)
    sweeps.validate(_CONFIG.value, runs)
    if _DRY_RUN.value:
      for run in runs:
        print(run.name)
      print(f"{len(runs)} runs, all overrides valid.")
      return
    summary = driver.run_sweep(
        _CONFIG.value, runs, _WORKDIR.value, parallel=_PARALLEL.value,
        vmap_seeds=_VMAP_SEEDS.value,
        config_path=config_flags.get_config_filename(flag),
        global_overrides=config_flags.get_override_values(flag))
  except errors.UserFacingError as e:
    sys.exit(f"error: {e}")
  print(f"Sweep {_WORKDIR.value}: {len(summary.finished)} finished, "
        f"{len(summary.skipped)} already done, {len(summary.recovered)} "
        f"recovered, {len(summary.failed)} failed.", flush=True)
  if summary.failed:
    for name, message in summary.failed.items():
      print(f"  FAILED {name}: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
