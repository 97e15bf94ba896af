"""Command-line flag parsing that turns a bad `--config` into one line.

`app.run(main, flags_parser=cli.parse_flags)` parses the flags like absl does,
but a config file that is missing, does not parse, rejects its `:arg`, or an
override that names no key of the config or has a bad value stops the program
with one `error: ...` line saying what to fix, instead of a traceback through
absl and ml_collections. Anything else (a bug in a config file, say a
NameError) keeps its traceback.
"""
import errno
import re
import sys
from typing import List, Optional

from absl import flags

CONFIG_FLAG = "config"


def _root_cause(exc: BaseException) -> BaseException:
  while exc.__cause__ is not None or exc.__context__ is not None:
    exc = exc.__cause__ or exc.__context__
  return exc


def _missing_key(exc: BaseException) -> Optional[str]:
  """The key a ConfigDict KeyError/AttributeError names (first quoted word)."""
  match = re.match(r"""^\W*'?([^'"\\\n]+)""", str(_root_cause(exc)))
  return match.group(1) if match else None


def _override_args(argv: List[str]) -> List[str]:
  prefix = f"--{CONFIG_FLAG}."
  return [a for a in argv[1:] if a.startswith(prefix)]


def _config_arg(argv: List[str]) -> str:
  for a in argv[1:]:
    if a.startswith(f"--{CONFIG_FLAG}="):
      return a
  return f"--{CONFIG_FLAG}"


def _unknown_key_line(exc, argv) -> Optional[str]:
  """The one line for an override naming no key of the config, or None when
  no override names the key (then the error is not the user's override)."""
  key = _missing_key(exc)
  for arg in _override_args(argv):
    path = arg.split("=", 1)[0][len(CONFIG_FLAG) + 3:].split(".")
    if key in path:
      hint = re.search(r'Did you mean "([^"]+)"', str(exc))
      parent = ".".join([CONFIG_FLAG] + path[:path.index(key)])
      line = f"{arg.split('=', 1)[0]}: {parent} has no key {key!r}"
      if hint:
        return line + f"; did you mean {hint.group(1)!r}?"
      return line + "; check the spelling against the config file."
  return None


def flag_error_line(exc: BaseException, argv: List[str]) -> Optional[str]:
  """The `error:` line for a flag parsing error the user can fix, or None."""
  if isinstance(exc, SyntaxError):
    return (f"{_config_arg(argv)}: the config file does not parse: "
            f"{exc.msg} ({exc.filename}, line {exc.lineno}).")
  if isinstance(exc, (KeyError, AttributeError)):
    return _unknown_key_line(exc, argv)
  if isinstance(exc, OSError):  # config_flags defers a missing file to here
    detail = str(_root_cause(exc)).strip().splitlines()[-1].strip()
    return (f"{_config_arg(argv)}: cannot load the config file ({detail}); "
            "pass an existing configs/<exp>.py[:arg].")
  if isinstance(exc, flags.Error):
    root = _root_cause(exc)
    if root is exc:
      return str(exc).splitlines()[0]
    flag = str(exc).split(": ", 1)[0].replace("flag ", "", 1)
    return f"{flag}: {str(root).strip().splitlines()[-1]}"
  return None


def _check_config_loaded(flag_values) -> None:
  """Raises the deferred load error of a config file that failed to load."""
  if CONFIG_FLAG in flag_values and flag_values[CONFIG_FLAG].value is not None:
    getattr(flag_values[CONFIG_FLAG].value, "keys")


def parse_flags(argv: List[str], flag_values=flags.FLAGS) -> List[str]:
  """absl `flags_parser`: parses `argv`; user errors exit with one line."""
  try:
    rest = flag_values(argv)
    _check_config_loaded(flag_values)
    return rest
  except (flags.Error, KeyError, AttributeError, OSError, SyntaxError) as e:
    line = flag_error_line(e, argv)
    if line is None:
      raise
    sys.exit(f"error: {line}")



# OS errors of the machine, not of the code: out of space, read-only disk.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def disk_error_line(exc: OSError) -> Optional[str]:
  """The `error:` line for a write that failed for lack of space or a
  read-only disk, or None for any other OSError."""
  if exc.errno not in DISK_ERRNOS:
    return None
  return (f"{exc.strerror} writing {exc.filename or 'the workdir'}; free "
          "space or pass another --workdir (earlier checkpoints are kept, so "
          "a rerun resumes).")
