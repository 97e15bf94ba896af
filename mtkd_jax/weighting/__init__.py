"""Multi-task weighting methods: a registry of optax-style init/update pairs.

`METHODS[name](**settings)` returns a `base.WeightingMethod`; a method's
hyper-parameters are its factory's keyword arguments, with the papers'
defaults (optax style: init and update close over them). `default_config()`
is the `weighting` config block: the method's name, the gradient mode and,
for every method with hyper-parameters, a block `weighting.<method>` of
them (`--config.weighting.cagrad.c=0.5`); `from_config` builds the chosen
method from it.

Loss-level (no gradients): ew, uncertainty, dwa, rlw, famo; and the loss
scalarizations gls, stch, imtl_l.
Gradient-level (Gram matrix of the task gradients): gradnorm, pcgrad,
gradvac, mgda, cagrad, imtl, nash_mtl, aligned_mtl, upgrad, fairgrad; the
stochastic multi-objective modo, sdmgrad (also the cross Gram matrix of two
half-batches, param mode only); and, on the flat gradients (param mode
only): dbmtl, moco, graddrop, excess_mtl, gradvac_layers.
"""
import inspect
from typing import Any, Callable, Dict

import ml_collections

from mtkd_jax import errors
from mtkd_jax import registry
from mtkd_jax.weighting import base
from mtkd_jax.weighting import flat_gradient
from mtkd_jax.weighting import gradient_allocation
from mtkd_jax.weighting import gradient_level
from mtkd_jax.weighting import loss_level
from mtkd_jax.weighting import scalarization
from mtkd_jax.weighting import stochastic_moo

METHODS: Dict[str, Callable[[], base.WeightingMethod]] = {
    "ew": loss_level.ew,
    "uncertainty": loss_level.uncertainty,
    "dwa": loss_level.dwa,
    "rlw": loss_level.rlw,
    "famo": loss_level.famo,
    "gls": scalarization.gls,
    "stch": scalarization.stch,
    "imtl_l": scalarization.imtl_l,
    "gradnorm": gradient_level.gradnorm,
    "pcgrad": gradient_level.pcgrad,
    "gradvac": gradient_level.gradvac,
    "mgda": gradient_level.mgda,
    "cagrad": gradient_level.cagrad,
    "imtl": gradient_level.imtl,
    "nash_mtl": gradient_level.nash_mtl,
    "aligned_mtl": gradient_level.aligned_mtl,
    "dbmtl": gradient_level.dbmtl,
    "upgrad": gradient_allocation.upgrad,
    "fairgrad": gradient_allocation.fairgrad,
    "modo": stochastic_moo.modo,
    "sdmgrad": stochastic_moo.sdmgrad,
    "moco": stochastic_moo.moco,
    "graddrop": flat_gradient.graddrop,
    "excess_mtl": flat_gradient.excess_mtl,
    "gradvac_layers": flat_gradient.gradvac_layers,
}


def settings(name: str) -> Dict[str, Any]:
  """{hyper-parameter: default} of method `name` (its factory's keywords)."""
  factory = registry.lookup(METHODS, name, "weighting method")
  return {k: p.default for k, p in inspect.signature(factory).parameters.items()}


def default_config() -> ml_collections.ConfigDict:
  """The `weighting` config block: method, gradient mode, and one block of
  hyper-parameters per method that has any, with the papers' defaults.

  The task specs' fixed weights are not here: they are part of the losses the
  methods see.
  """
  c = ml_collections.ConfigDict()
  c.name = "ew"
  # "param": gradients of the shared parameters; "rep": of the shared
  # representation (MGDA-UB style; not for methods with
  # supports_rep_grad=False).
  c.mode = "param"
  for name in METHODS:
    defaults = settings(name)
    if defaults:
      c[name] = defaults
  return c


def _check_settings(name: str, keys) -> None:
  """Raises ConfigError on an unknown method or a key it does not take."""
  valid = settings(name)
  unknown = sorted(set(keys) - set(valid))
  if unknown:
    raise errors.ConfigError(
        f"Unknown config.weighting.{name} key(s) {', '.join(unknown)}; "
        f"{name} takes: {', '.join(valid) or 'none'}.")


def check_config(cfg) -> None:
  """Raises ConfigError on an unknown method name or hyper-parameter key.

  Args:
    cfg: the `weighting` config block.
  """
  registry.lookup(METHODS, cfg.name, "weighting method")
  for name in METHODS:
    if name in cfg:
      _check_settings(name, cfg[name])


def get_method(name: str, **method_settings) -> base.WeightingMethod:
  """`METHODS[name](**method_settings)`; a ConfigError lists the valid names
  (and the valid settings, for an unknown one)."""
  _check_settings(name, method_settings)
  return METHODS[name](**method_settings)


def from_config(cfg) -> base.WeightingMethod:
  """The method `cfg.name` with its settings `cfg.<name>` (the weighting
  config block, every method's block checked first; settings left out take
  the factory's defaults)."""
  check_config(cfg)
  block = cfg.get(cfg.name)
  return get_method(cfg.name, **(block.to_dict() if block is not None else {}))
