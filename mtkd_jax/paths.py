"""Workdir paths through `etils.epath`: local directories and gs://, s3://,
az://, hf:// alike (each remote scheme needs its fsspec backend installed).

`workdir(path)` is the one door: it checks the scheme once, so
`--workdir gs://bucket/run` either works or stops with one line naming the
package to install, never silently writing to a local `./gs:/bucket/run`.
"""
import importlib.util
import json
import os
from typing import Any

from etils import epath

from mtkd_jax import errors

# Scheme -> the package epath's fsspec backend needs for it.
BACKENDS = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


def scheme(path) -> str:
  """"gs" for "gs://b/x"; "" for a local path."""
  path = os.fspath(path)
  return path.split("://", 1)[0] if "://" in path else ""


def is_local(path) -> bool:
  return not scheme(path)


def workdir(path) -> epath.Path:
  """An epath for a workdir or any file location of a run.

  Local paths are made absolute (Orbax needs that).

  Raises:
    ConfigError: the scheme is not one epath supports, or its backend
      package is not installed.
  """
  s = scheme(path)
  if not s:
    return epath.Path(os.path.abspath(os.fspath(path)))
  if s not in BACKENDS:
    raise errors.ConfigError(
        f"Unsupported path scheme {s}:// in {os.fspath(path)!r}; use a local "
        f"directory or one of {', '.join(k + '://' for k in BACKENDS)}.")
  if importlib.util.find_spec(BACKENDS[s]) is None:
    raise errors.ConfigError(
        f"{s}:// paths need the {BACKENDS[s]} package: pip install "
        f"{BACKENDS[s]}")
  return epath.Path(os.fspath(path))


def write_json(path: epath.Path, value: Any) -> None:
  path.write_text(json.dumps(value, indent=2))


def read_json(path: epath.Path) -> Any:
  return json.loads(path.read_text())
