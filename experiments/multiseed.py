r"""Trains several seeds of one config as one vmapped program.

  python -m experiments.multiseed --config configs/mmoe_synthetic.py \
      --workdir /tmp/mtkd/mmoe_seeds --seeds 0,1,2,3 [--config.a.b=value ...]

Writes `<workdir>/seed_<s>/` (or the `--seed_workdir`s, one per seed in
order) with config.json, metrics.jsonl and results.json like a single run.
No checkpoints: a killed run starts over (mtkd_jax/train/multiseed.py).
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mtkd_jax import errors
from mtkd_jax import logs
from mtkd_jax.train import multiseed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<exp>.py[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent of seed_<s>/.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds, e.g. 0,1,2.")
_SEED_WORKDIRS = flags.DEFINE_multi_string(
    "seed_workdir", None, "Per-seed workdirs (one per seed, in order) "
    "instead of <workdir>/seed_<s>.")
flags.mark_flags_as_required(["config", "workdir", "seeds"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_orbax(logging.INFO)
  try:
    multiseed.train_and_evaluate_seeds(
        _CONFIG.value, _WORKDIR.value, [int(s) for s in _SEEDS.value],
        seed_workdirs=_SEED_WORKDIRS.value)
  except errors.UserFacingError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
