r"""Trains and evaluates one experiment config.

  python -m experiments.run --config configs/synthetic_mmoe.py --workdir /tmp/mtkd/run \
      [--config.train.batch_size=512 ...]
"""
import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mtkd_jax import errors
from mtkd_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<exp>.py[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and results; an "
    "existing one is resumed.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
  """Keeps Orbax's per-save INFO chatter out of the log (warnings still show)."""
  return (record.levelno >= std_logging.WARNING
          or "orbax" not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except errors.UserFacingError as e:  # the message says what to fix
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
