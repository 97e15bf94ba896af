r"""Trains and evaluates one experiment config.

  python -m experiments.run --config configs/synthetic_mmoe.py --workdir /tmp/mtkd/run \
      [--config.train.batch_size=512 ...]
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mtkd_jax import cli
from mtkd_jax import errors
from mtkd_jax import logs
from mtkd_jax import train
from mtkd_jax.train import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<exp>.py[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and results; an "
    "existing one is resumed.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_orbax(logging.INFO)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except errors.UserFacingError as e:  # the message says what to fix
    sys.exit(f"error: {e}")
  except OSError as e:
    if cli.disk_error_line(e) is None:
      raise
    sys.exit(f"error: {cli.disk_error_line(e)}")
  except preemption.Preempted as e:  # saved; the same command resumes
    logging.warning("%s", e)
  except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
    sys.exit("Interrupted before the first training step.")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
