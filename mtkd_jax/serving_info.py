"""What serving a run needs besides its checkpoint and config, saved in its
workdir at training time, so an export never loads the data set.

<workdir>/serving/
  spec.json           the DatasetSpec the model was built from (fields,
                      vocabulary sizes, tasks with the run's overrides, the
                      table row padding of a sharded run);
  example_inputs.npz  a few test rows in the model's input layout: the input
                      signature (names, dtypes, widths) and a self-check;
  extras.npz          the model's dataset extras where it reads any (the
                      retrieval tower's item catalogue), one array per
                      "<extra>/<column>".
"""
from typing import Mapping, NamedTuple, Optional

import numpy as np

from mtkd_jax import errors
from mtkd_jax import paths
from mtkd_jax.data import specs as specs_lib

DIRNAME = "serving"
NUM_EXAMPLES = 8
NOT_INPUTS = ("labels/", "teacher/", "item_logq/")
NOT_INPUT_KEYS = ("weights",)
MODEL_EXTRAS = ("catalogue",)  # the dataset extras a model reads (models/)


def is_input(key: str) -> bool:
  """Whether a batch column is a model input (labels, weights, teacher
  targets and sampling corrections are training-only)."""
  return key not in NOT_INPUT_KEYS and not key.startswith(NOT_INPUTS)


class ServingInfo(NamedTuple):
  spec: specs_lib.DatasetSpec
  example_inputs: dict  # column -> array[NUM_EXAMPLES, ...]
  extras: Optional[dict]  # {extra name: {column: array}} or None


def save(workdir: str, spec: specs_lib.DatasetSpec,
         example_batch: Mapping[str, np.ndarray], extras=None) -> None:
  """Writes <workdir>/serving/ (see the module docstring)."""
  directory = paths.workdir(workdir) / DIRNAME
  directory.mkdir(parents=True, exist_ok=True)
  paths.write_json(directory / "spec.json", specs_lib.spec_to_dict(spec))
  paths.save_npz(directory / "example_inputs.npz",
             {k: np.asarray(v)[:NUM_EXAMPLES]
              for k, v in example_batch.items() if is_input(k)})
  arrays = {f"{name}/{col}": np.asarray(v)
            for name, extra in (extras or {}).items() if name in MODEL_EXTRAS
            for col, v in extra.items()}
  if arrays:
    paths.save_npz(directory / "extras.npz", arrays)


def load(workdir: str) -> ServingInfo:
  """The serving info a run saved; a clear error if it saved none."""
  directory = paths.workdir(workdir) / DIRNAME
  path = directory / "spec.json"
  if not path.exists():
    raise errors.ConfigError(
        f"Run {workdir!r} has no serving info ({path}); it was trained by an "
        "older version: export it where its data set is available, or retrain.")
  spec = specs_lib.spec_from_dict(paths.read_json(path))
  example = paths.load_npz(directory / "example_inputs.npz")
  extras = None
  if (directory / "extras.npz").exists():
    extras = {}
    for key, value in paths.load_npz(directory / "extras.npz").items():
      name, col = key.split("/", 1)
      extras.setdefault(name, {})[col] = value
  return ServingInfo(spec, example, extras)
