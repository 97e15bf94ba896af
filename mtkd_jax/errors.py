"""Errors whose message alone says what to fix.

`experiments/run.py` prints these as one line (no traceback) and exits with
status 1; any other exception keeps its traceback, since it is a bug.
"""


class UserFacingError(Exception):
  """Bad input or a failed run the user can fix; the message says how."""


class ConfigError(UserFacingError, ValueError):
  """A config value is invalid: unknown name, bad size, missing metric."""


class DataError(UserFacingError, ValueError):
  """The data does not match its spec; says which split, field and row."""


class MissingDataError(UserFacingError, FileNotFoundError):
  """A data directory lacks the files a dataset needs."""


class NonFiniteLossError(UserFacingError, FloatingPointError):
  """A loss became NaN/Inf; says at which step and for which task."""


class WorkdirError(UserFacingError, OSError):
  """The workdir is unusable: a file, read-only, full, or in use."""


class CheckpointError(UserFacingError):
  """No checkpoint of a workdir restores; says which and why."""
