r"""Sweeps: lists of named config-override sets, and the helpers that build them.

A sweep file (configs/sweeps/<name>.py) defines `get_sweep(arg=None)`
returning a list of override sets; each is a dict of dotted config keys ->
values, applied on top of the base config of `experiments.ablation`:

  from mtkd_jax import sweeps

  def get_sweep(arg=None):
    return sweeps.product(
        **{"model.name": ["mmoe", "shared_bottom"],
           "weighting.name": ["ew", "uw"]},
        seed=[0, 1, 2])

Helpers (each returns a plain list of dicts, so they nest):
  product(*sweeps, **axes)  cartesian product; the first factor varies slowest;
  zip_(**axes)              the i-th values of every axis together;
  chain(*sweeps)            concatenation;
  named(name, sweep)        labels every entry (the label replaces the derived
                            name of its non-seed overrides);
  seeds(n | values)         [{"seed": s}, ...], e.g. product(base, seeds(3));
                            seeds() gives DEFAULT_SEEDS.
  split_seeds_option(arg)   a sweep argument's `:seeds=N` option (N seeds
                            instead of the default), and the rest.

DEFAULT_SEEDS (five) is the seed count every shipped sweep uses: with fewer
paired seeds a significance test has too little power, and a two-sided
Wilcoxon signed-rank test cannot go below p = 2 / 2^n at all (0.25 at n = 3;
the report says so, see ablation/stats.py).

Run names are readable and filesystem-safe: the overrides as `key=value`
joined by "__", each key shortened to its shortest dotted suffix that is
unique in the sweep, seed last, e.g. `correlation=0.5__name=mmoe__seed=0`.
A run's *variant* is its name without the seed: the rows of the report.
"""
import copy
import dataclasses
import difflib
import importlib.util
import itertools
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import ml_collections

from mtkd_jax import errors

NAME = "__name__"  # reserved key: an entry's label (see `named`)
SEED = "seed"
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
_SEP = "__"
_MAX_NAME = 180

Entry = Dict[str, Any]
Sweep = List[Entry]


# ----------------------------------------------------------------- helpers


def _as_sweep(sweep: Union[Entry, Sequence[Entry]]) -> Sweep:
  if isinstance(sweep, Mapping):
    return [dict(sweep)]
  out = list(sweep)
  for entry in out:
    if not isinstance(entry, Mapping):
      raise TypeError(f"A sweep is a list of dicts; got an entry {entry!r}.")
  return [dict(e) for e in out]


def _label_or_derived(entry: Entry) -> str:
  if NAME in entry:
    return entry[NAME]
  return _SEP.join(f"{k}={format_value(v)}"
                   for k, v in entry.items() if k not in (NAME, SEED))


def _merge(parts: Sequence[Entry]) -> Entry:
  merged = {}
  for part in parts:
    for key, value in part.items():
      if key == NAME:
        continue
      if key in merged:
        raise ValueError(f"Sweep key {key!r} is set twice in one product.")
      merged[key] = value
  if any(NAME in p for p in parts):
    merged[NAME] = _SEP.join(
        s for s in (_label_or_derived(p) for p in parts) if s)
  return merged


def product(*sweeps, **axes) -> Sweep:
  """Cartesian product of sweeps and `key=[values]` axes (first slowest).

  `product(**{"model.name": ["a", "b"]}, seed=[0, 1])` has 4 entries.
  """
  factors = [_as_sweep(s) for s in sweeps]
  factors += [[{key: v} for v in values] for key, values in axes.items()]
  return [_merge(parts) for parts in itertools.product(*factors)]


def zip_(**axes) -> Sweep:
  """`zip_(**{"a": [1, 2], "b": [3, 4]})` -> [{a: 1, b: 3}, {a: 2, b: 4}]."""
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zip_ needs axes of equal length; got {lengths}.")
  return [dict(zip(axes, values)) for values in zip(*axes.values())]


def chain(*sweeps) -> Sweep:
  """The entries of every sweep, in order."""
  return [e for s in sweeps for e in _as_sweep(s)]


def named(name: str, sweep: Union[Entry, Sequence[Entry]] = ()) -> Sweep:
  """Labels every entry of `sweep` (a dict or a list) with `name`.

  The label replaces the derived name of the entry's non-seed overrides, so
  `product(named("baseline", {...}), seeds(3))` gives runs
  `baseline__seed=0`, ... . `named("base")` alone is one run of the base
  config.
  """
  entries = _as_sweep(sweep) or [{}]
  return [{**e, NAME: sanitize(name)} for e in entries]


def seeds(n_or_values: Union[int, Sequence[int], None] = None) -> Sweep:
  """[{"seed": s}] for s in range(n) (an int), the given values, or
  DEFAULT_SEEDS (None)."""
  if n_or_values is None:
    n_or_values = DEFAULT_SEEDS
  values = (range(n_or_values) if isinstance(n_or_values, int)
            else n_or_values)
  return [{SEED: int(s)} for s in values]


def split_seeds_option(arg: Optional[str], default=DEFAULT_SEEDS):
  """Splits a sweep argument's `seeds=N` option from the rest.

  Sweep files take `<rest>:seeds=N` (or just `seeds=N`) to run seeds
  0..N-1 instead of `default`, e.g. `architectures.py:mmoe,ple:seeds=6`.
  Returns (the argument without the option, or None; the seed values).
  """
  if not arg:
    return arg, tuple(default)
  parts = arg.split(":")
  options = [p for p in parts if p.startswith("seeds=")]
  rest = ":".join(p for p in parts if not p.startswith("seeds=")) or None
  if not options:
    return rest, tuple(default)
  value = options[-1][len("seeds="):]
  if len(options) > 1 or not value.isdigit() or int(value) < 1:
    raise errors.ConfigError(f"Sweep option {':'.join(options)!r} must be "
                             "one 'seeds=N' with N a positive integer.")
  return rest, tuple(range(int(value)))


# ------------------------------------------------------------------ naming


def format_value(value) -> str:
  """A readable, filesystem-safe rendering of an override value."""
  if isinstance(value, (tuple, list)):
    return "-".join(format_value(v) for v in value) or "none"
  if isinstance(value, float):
    return repr(value)
  return sanitize(str(value))


def sanitize(text: str) -> str:
  text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")
  return text or "none"


def short_keys(keys: Sequence[str]) -> Dict[str, str]:
  """key -> its shortest dotted suffix that no other key ends with."""
  keys = list(dict.fromkeys(keys))
  out = {}
  for key in keys:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      clash = any(other != key and (other == suffix or
                                    other.endswith("." + suffix))
                  for other in keys)
      if not clash:
        break
    out[key] = suffix
  return out


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep.

  Attributes:
    name: unique, filesystem-safe; its workdir is <sweep dir>/<name>.
    variant: the name without the seed (runs of one variant differ only in
      seed; they are one row of the report).
    overrides: dotted config key -> value (no label).
    index: position in the sweep.
  """
  name: str
  variant: str
  overrides: Dict[str, Any]
  index: int

  @property
  def seed(self) -> Optional[int]:
    return self.overrides.get(SEED)

  def overrides_without_seed(self) -> Dict[str, Any]:
    return {k: v for k, v in self.overrides.items() if k != SEED}


def _truncate(name: str) -> str:
  if len(name) <= _MAX_NAME:
    return name
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha1(name.encode()).hexdigest()[:8]
  return name[:_MAX_NAME - 9] + "-" + digest


def make_runs(sweep: Sequence[Entry]) -> List[Run]:
  """Names every entry; raises ConfigError on an empty sweep or clashes."""
  sweep = _as_sweep(sweep)
  if not sweep:
    raise errors.ConfigError("The sweep is empty.")
  short = short_keys([k for e in sweep for k in e if k not in (NAME, SEED)])
  runs = []
  for index, entry in enumerate(sweep):
    overrides = {k: v for k, v in entry.items() if k != NAME}
    if NAME in entry:
      variant = entry[NAME]
    else:
      variant = _SEP.join(f"{short[k]}={format_value(v)}"
                          for k, v in overrides.items() if k != SEED) or "base"
    variant = _truncate(variant)
    name = variant
    if SEED in overrides:
      if isinstance(overrides[SEED], bool) or not isinstance(
          overrides[SEED], int):
        raise errors.ConfigError(f"seed must be an int, got "
                                 f"{overrides[SEED]!r} in entry {index}.")
      name = f"{variant}{_SEP}seed={overrides[SEED]}"
    runs.append(Run(name, variant, overrides, index))
  seen = {}
  for run in runs:
    if run.name in seen:
      raise errors.ConfigError(
          f"Two sweep entries get the run name {run.name!r} (entries "
          f"{seen[run.name]} and {run.index}); make them differ or label them "
          "with sweeps.named().")
    seen[run.name] = run.index
  return runs


# ----------------------------------------------------- configs and overrides


def _load_module(path: str, what: str):
  if not os.path.exists(path):
    raise errors.ConfigError(f"{what} file {path!r} does not exist.")
  name = "_mtkd_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _split_arg(path_and_arg: str):
  path, _, arg = path_and_arg.partition(":")
  return path, (arg or None)


def load_sweep(path_and_arg: str) -> List[Run]:
  """Runs of `configs/sweeps/<name>.py[:arg]` (its `get_sweep(arg)`)."""
  path, arg = _split_arg(path_and_arg)
  module = _load_module(path, "Sweep")
  if not hasattr(module, "get_sweep"):
    raise errors.ConfigError(f"Sweep file {path!r} defines no get_sweep().")
  sweep = module.get_sweep(arg) if arg is not None else module.get_sweep()
  return make_runs(sweep)


def load_config(path_and_arg: str) -> ml_collections.ConfigDict:
  """`configs/<exp>.py[:arg]` -> its locked `get_config(arg)`."""
  path, arg = _split_arg(path_and_arg)
  config = _load_module(path, "Config").get_config(arg)
  config.lock()
  return config


def set_override(config: ml_collections.ConfigDict, key: str, value) -> None:
  """`config.<key> = value` for a dotted key; unknown keys raise ConfigError."""
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      prefix = ".".join(parts[:i])
      where = f"config.{prefix}" if prefix else "config"
      valid = sorted(node.keys()) if isinstance(
          node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, valid, n=1)
      hint = f" Did you mean {'.'.join(parts[:i] + close)!r}?" if close else ""
      raise errors.ConfigError(f"Unknown config key {key!r}: {where} has no "
                               f"field {part!r}.{hint}")
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(value, list):
    value = tuple(value)
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(f"Bad value {value!r} for config key {key!r}: "
                             f"{e}") from None


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A locked copy of `config` with `overrides` set (dotted keys)."""
  config = copy.deepcopy(config)
  config.lock()
  for key, value in overrides.items():
    set_override(config, key, value)
  return config


def check_names(config: ml_collections.ConfigDict) -> None:
  """Fails on an unknown model name or key, or weighting method name or
  setting (before training)."""
  from mtkd_jax import models  # pylint: disable=g-import-not-at-top
  from mtkd_jax import weighting  # pylint: disable=g-import-not-at-top
  models.check_config(config.model)
  if "weighting" in config and "name" in config.weighting:
    weighting.from_config(config.weighting)


def validate(config: ml_collections.ConfigDict, runs: Sequence[Run]) -> None:
  """Applies every run's overrides to a locked copy; names the bad run."""
  for run in runs:
    try:
      check_names(apply_overrides(config, run.overrides))
    except errors.ConfigError as e:
      raise errors.ConfigError(f"Sweep run {run.name!r}: {e}") from None


def cli_value(value) -> str:
  """A value as `--config.key=<text>` (parsed back by ml_collections)."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, (bool, str)):
    return str(value)
  return repr(value)


def cli_overrides(overrides: Mapping[str, Any]) -> List[str]:
  return [f"--config.{k}={cli_value(v)}" for k, v in overrides.items()]


def jsonable(overrides: Mapping[str, Any]) -> Dict[str, Any]:
  """Overrides as JSON values (tuples -> lists)."""
  return json.loads(json.dumps(dict(overrides)))
