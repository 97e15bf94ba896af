"""Workdir paths through `etils.epath`: local directories and gs://, s3://,
az://, hf:// alike (each remote scheme needs its fsspec backend installed).

`path(p)` (alias `workdir`) is the one door for every file a run, a sweep,
an export or a prediction reads or writes: it checks the scheme once, so
`--workdir gs://bucket/run` either works or stops with one line naming the
package to install, never silently writing to a local `./gs:/bucket/run`.
The helpers below do what `open`/`np.savez` did, for any scheme.
"""
import importlib.util
import io
import json
import os
from typing import Any, Dict

import numpy as np

from etils import epath

from mtkd_jax import errors

# Scheme -> the package epath's fsspec backend needs for it.
BACKENDS = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


def scheme(location) -> str:
  """"gs" for "gs://b/x"; "" for a local path."""
  location = os.fspath(location)
  return location.split("://", 1)[0] if "://" in location else ""


def is_local(location) -> bool:
  return not scheme(location)


def path(location) -> epath.Path:
  """An epath for a workdir or any file or directory location.

  Local paths are made absolute (Orbax needs that).

  Raises:
    ConfigError: the scheme is not one epath supports, or its backend
      package is not installed.
  """
  s = scheme(location)
  if not s:
    return epath.Path(os.path.abspath(os.fspath(location)))
  if s not in BACKENDS:
    raise errors.ConfigError(
        f"Unsupported path scheme {s}:// in {os.fspath(location)!r}; use a "
        f"local directory or one of {', '.join(k + '://' for k in BACKENDS)}.")
  if importlib.util.find_spec(BACKENDS[s]) is None:
    raise errors.ConfigError(
        f"{s}:// paths need the {BACKENDS[s]} package: pip install "
        f"{BACKENDS[s]}")
  return epath.Path(os.fspath(location))


workdir = path


def write_json(file: epath.Path, value: Any) -> None:
  file.write_text(json.dumps(value, indent=2))


def read_json(file: epath.Path) -> Any:
  return json.loads(file.read_text())


def append_text(file: epath.Path, text: str) -> None:
  """Appends `text` to `file`: locally one write, flushed and fsynced;
  object stores (gs://, s3://) cannot append, so there the file is read and
  written back whole (one writer per file, as everywhere here)."""
  if is_local(file):
    with open(os.fspath(file), "a") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    return
  old = file.read_text() if file.exists() else ""
  file.write_text(old + text)


def save_npz(file: epath.Path, arrays: Dict[str, np.ndarray]) -> None:
  """`np.savez` to any scheme (".npz" appended when missing, as it does)."""
  if not file.name.endswith(".npz"):
    file = file.parent / (file.name + ".npz")
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  file.write_bytes(buffer.getvalue())


def load_npz(file: epath.Path) -> Dict[str, np.ndarray]:
  """The arrays of an .npz on any scheme."""
  with np.load(io.BytesIO(file.read_bytes())) as f:
    return {k: f[k] for k in f.files}
