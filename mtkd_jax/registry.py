"""Name lookups for the plain module-level registries (models, losses, ...).

Registries are ordinary dicts; `lookup` only turns a missing key into an error
that lists the valid names, so a typo in a config says what to write instead.
"""
from typing import Mapping, TypeVar

from mtkd_jax import errors

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
  """Returns `registry[name]`, or raises ConfigError naming the valid choices."""
  try:
    return registry[name]
  except KeyError:
    valid = ", ".join(sorted(registry))
    raise errors.ConfigError(f"Unknown {kind} {name!r}; valid names: {valid}.") from None
