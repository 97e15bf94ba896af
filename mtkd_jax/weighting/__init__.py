"""Multi-task weighting methods (placeholder registry with EW only; the full
set of methods is being added by the weighting work — extend, don't keep)."""
import jax.numpy as jnp
import ml_collections

from mtkd_jax import registry
from mtkd_jax.weighting import base


def _ew():
  def init(term_names, params=None, **unused):
    del term_names, params, unused
    return {}

  def update(losses, grads, state, *, step, rng, params):
    del grads, step, rng, params
    coeffs = jnp.ones_like(losses)
    return base.Combination(coeffs), state, {}
  return base.WeightingMethod(init, update, needs_grads=False)


METHODS = {"ew": _ew}


def get_method(name: str) -> base.WeightingMethod:
  return registry.lookup(METHODS, name, "weighting method")()


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "ew"
  c.mode = "param"
  return c
