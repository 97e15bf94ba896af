"""One run per workdir, with one config: the lock, the config check, space.

`claim(workdir, config)` (a context manager around a run):
  * creates the workdir, or stops with one line when it is a file or cannot
    be written;
  * takes `<workdir>/LOCK` (the owner's host and pid) for the run; a second
    process stops with one line naming the owner; a lock whose process is
    dead (same host) is stale and taken over with a warning;
  * when the workdir holds checkpoints, refuses a config that differs from
    the saved `config.json` in any key outside `RESULT_NEUTRAL_KEYS`, with
    one line listing the keys (a resume would mix two experiments); only
    then writes the run's `config.json`, so a refused run never overwrites it.
`check_free_space` stops a save that would fill the disk, before it starts.
"""
import contextlib
import json
import os
import shutil
import socket
from typing import Dict, List

from absl import logging
from etils import epath
import jax

from mtkd_jax import errors
from mtkd_jax import paths

CONFIG_FILE = "config.json"
LOCK_FILE = "LOCK"
# Keys that may change between a run and its resume: they change how often
# the run logs, saves or diagnoses, where it finds its data, or how it is
# placed on devices (a preempted run may resume on another slice), not what
# it computes. Others may extend this tuple; a key ending in "." covers a
# whole section. eval_every and patience are NOT here: they decide which
# checkpoint is selected as best.
RESULT_NEUTRAL_KEYS = (
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.tensorboard", "train.progress", "train.accel",
    "train.steps_per_call",
    "train.num_devices", "train.distributed", "train.parallel",
    "weighting.diagnostics_every", "eval.batch_size",
    "data.data_dir", "data.tfds_dir", "data.cache_dir",
)
# Bytes kept free beyond a checkpoint's own size (logs, Orbax metadata).
FREE_SPACE_MARGIN = 64 << 20


def _flatten(tree, prefix="") -> Dict[str, object]:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}{k}."))
  return out


def _neutral(key: str) -> bool:
  return any(key == n or (n.endswith(".") and key.startswith(n))
             for n in RESULT_NEUTRAL_KEYS)


def config_differences(saved: dict, new: dict) -> List[str]:
  """'key: old -> new' for each result-changing key that differs."""
  a, b = _flatten(saved), _flatten(new)
  return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}"
          for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not _neutral(k)]


def has_checkpoints(workdir) -> bool:
  ckpts = paths.path(workdir) / "checkpoints"
  return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


def check_resumable_config(workdir, config_json: str) -> None:
  """Raises ConfigError when the workdir's checkpoints were made with a
  config that differs from `config_json` in a result-changing key."""
  saved_path = paths.path(workdir) / CONFIG_FILE
  if not (saved_path.exists() and has_checkpoints(workdir)):
    return
  diffs = config_differences(json.loads(saved_path.read_text()),
                             json.loads(config_json))
  if diffs:
    raise errors.ConfigError(
        f"workdir {str(workdir)!r} holds checkpoints of another config "
        f"({'; '.join(diffs)}); resuming would mix the two. Use a new "
        "--workdir, or rerun with the saved values (see its config.json).")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _read_owner(lock: epath.Path) -> dict:
  try:
    return json.loads(lock.read_text())
  except (OSError, ValueError):
    return {}


def _create_exclusively(lock: epath.Path, text: str) -> None:
  """Writes a new file; FileExistsError if it exists. Atomic on local disks
  (O_EXCL); object stores have no such primitive, so there a check comes
  first (two drivers starting in the same second may both pass)."""
  if paths.is_local(lock):
    fd = os.open(os.fspath(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return
  if lock.exists():
    raise FileExistsError(str(lock))
  lock.write_text(text)


def acquire_lock(workdir) -> epath.Path:
  """Creates `<workdir>/LOCK` naming this process; returns its path.

  Raises WorkdirError naming the owner when a live process holds it.
  """
  path = paths.path(workdir) / LOCK_FILE
  me = {"host": socket.gethostname(), "pid": os.getpid()}
  for _ in range(2):
    try:
      _create_exclusively(path, json.dumps(me))
    except FileExistsError:
      owner = _read_owner(path)
      pid = owner.get("pid")
      if (owner.get("host") == me["host"] and isinstance(pid, int)
          and not _pid_alive(pid)):
        logging.warning("Taking over the stale lock %s of dead process %d.",
                        path, pid)
        path.unlink(missing_ok=True)
        continue
      raise errors.WorkdirError(
          f"workdir {str(workdir)!r} is in use by process {pid} on "
          f"{owner.get('host', '?')} (lock {path}); wait for it, use another "
          "--workdir, or delete the lock if that process is gone.") from None
    except OSError as e:
      raise errors.WorkdirError(
          f"workdir {str(workdir)!r} is not writable ({e.strerror or e}); fix "
          "its permissions or pass another --workdir.") from None
    return path
  raise errors.WorkdirError(f"Could not take the lock {path}; retry.")


def _make_workdir(workdir) -> None:
  directory = paths.path(workdir)
  if directory.exists() and not directory.is_dir():
    raise errors.WorkdirError(f"workdir {str(workdir)!r} is a file; pass a "
                              "directory as --workdir.")
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.WorkdirError(f"cannot create workdir {str(workdir)!r} "
                              f"({e.strerror or e}); pass a writable --workdir."
                              ) from None


@contextlib.contextmanager
def claim(workdir: str, config):
  """Holds `workdir` for one run of `config` (see the module docstring)."""
  lock = None
  if jax.process_index() == 0:
    _make_workdir(workdir)
    lock = acquire_lock(workdir)
  try:
    if jax.process_index() == 0:
      config_json = config.to_json_best_effort(indent=2)
      check_resumable_config(workdir, config_json)
      (paths.path(workdir) / CONFIG_FILE).write_text(config_json)
    yield
  finally:
    if lock is not None:
      lock.unlink(missing_ok=True)


def check_free_space(directory, needed_bytes: int) -> None:
  """Raises WorkdirError when `directory`'s disk has less than
  `needed_bytes` + FREE_SPACE_MARGIN free (local paths only)."""
  directory = str(directory)
  if "://" in directory:
    return
  free = shutil.disk_usage(directory).free
  if free < needed_bytes + FREE_SPACE_MARGIN:
    raise errors.WorkdirError(
        f"disk full: {free / 2**20:.0f} MiB free under {directory!r}, a "
        f"checkpoint needs about {(needed_bytes + FREE_SPACE_MARGIN) / 2**20:.0f}"
        " MiB; free some space (earlier checkpoints are kept) and rerun to "
        "resume.")
