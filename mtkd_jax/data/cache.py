"""A stamped npz cache of decoded split columns, for the plain numpy loaders.

The census, Ali-CCP / AliExpress and MovieLens latest-small loaders parse their
raw files with numpy (no TFDS: see each module's docstring for why), turn them
into the batch layout of `mtkd_jax.data.specs`, and cache the result here:
one file `<cache_dir>/<dataset>-<key>.npz` holding every split's columns and a
JSON metadata string. `key` hashes the cache format, a fingerprint of the raw
files and every option that changes the columns (split seed, task group, ...),
so changed raw files or options never get stale columns; they get a new file.
Old files are not deleted (each is the size of the decoded data).

The cache holds decoded copies of licensed data: it lives outside the
repository (default `~/.cache/mtkd_jax/columns`; `*.npz` is git-ignored).
"""
import hashlib
import json
import os
import pathlib
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

DEFAULT_CACHE_DIR = "~/.cache/mtkd_jax/columns"
# Files larger than this are fingerprinted by name, size and mtime instead of
# content: hashing the multi-GB Ali-CCP CSVs on every load would take minutes.
HASH_LIMIT_BYTES = 256 << 20
_SEP = "--"  # between split and column name in the npz keys


def get_option(cfg, name: str, default):
  """`cfg.name`, or `default` when it is absent or None (any object works)."""
  value = getattr(cfg, name, None)
  return default if value is None else value


def resolve_dir(path: str, default: str) -> pathlib.Path:
  """`path` ('' -> `default`) with `~` expanded."""
  return pathlib.Path(os.path.expanduser(str(path or default)))


def fingerprint(paths: Iterable[pathlib.Path]) -> str:
  """sha256 over each file's name and content (name, size, mtime if large)."""
  h = hashlib.sha256()
  for path in paths:
    path = pathlib.Path(path)
    h.update(path.name.encode())
    stat = path.stat()
    if stat.st_size > HASH_LIMIT_BYTES:
      h.update(f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}".encode())
      continue
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()


def cache_key(*parts: Any) -> str:
  """A short hash of JSON-serialisable `parts` (format, files, options)."""
  blob = json.dumps(parts, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:24]


def cache_path(cache_dir: pathlib.Path, dataset: str,
               key: str) -> pathlib.Path:
  return pathlib.Path(cache_dir) / f"{dataset}-{key}.npz"


def save(path: pathlib.Path, splits: Dict[str, Dict[str, np.ndarray]],
         metadata: Dict[str, Any]) -> None:
  """Writes `{split: {column: array}}` and `metadata` atomically."""
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {"_metadata": np.asarray(json.dumps(metadata, sort_keys=True))}
  for split, cols in splits.items():
    for name, value in cols.items():
      arrays[f"{split}{_SEP}{name.replace('/', '__')}"] = value
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def load(path: pathlib.Path) -> Optional[Tuple[Dict[str, Dict[str, np.ndarray]],
                                               Dict[str, Any]]]:
  """(splits, metadata) from `save`, or None if absent or unreadable."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as z:
      metadata = json.loads(str(z["_metadata"]))
      splits = {}
      for key in z.files:
        if key == "_metadata":
          continue
        split, name = key.split(_SEP, 1)
        splits.setdefault(split, {})[name.replace("__", "/")] = z[key]
  except (OSError, ValueError, KeyError):
    return None
  return splits, metadata


def head(cols: Dict[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
  """The first `n` rows of every column."""
  return {k: v[:n] for k, v in cols.items()}
