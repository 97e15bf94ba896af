"""Log set-up shared by the command-line entry points."""
import logging as std_logging

from absl import logging


def _not_orbax_info(record) -> bool:
  return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def quiet_orbax(verbosity=logging.INFO) -> None:
  """Sets absl's verbosity and keeps Orbax's per-save INFO chatter out of the
  log (its warnings still show)."""
  logging.set_verbosity(verbosity)
  logging.get_absl_handler().addFilter(_not_orbax_info)
