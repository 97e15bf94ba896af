"""Multi-task weighting methods: a registry of optax-style init/update pairs.

`get_method(name)` returns a `base.WeightingMethod`; `default_config()` the
`weighting` config block (the method's name, the gradient mode and every
method's hyper-parameters, flat, named `<method>_<param>`, with the papers'
defaults). The update functions receive that ConfigDict as `params`.

Loss-level (no gradients): ew, uncertainty, dwa, rlw, famo; and the loss
scalarizations gls, stch, imtl_l.
Gradient-level (Gram matrix of the task gradients): gradnorm, pcgrad,
gradvac, mgda, cagrad, imtl, nash_mtl, aligned_mtl, upgrad, fairgrad; the
stochastic multi-objective modo, sdmgrad (also the cross Gram matrix of two
half-batches, param mode only); and, on the flat gradients (param mode
only): dbmtl, moco, graddrop, excess_mtl, gradvac_layers.
"""
from typing import Callable, Dict

from mtkd_jax import registry
from mtkd_jax.weighting import base
from mtkd_jax.weighting import flat_gradient
from mtkd_jax.weighting import gradient_allocation
from mtkd_jax.weighting import gradient_level
from mtkd_jax.weighting import loss_level
from mtkd_jax.weighting import scalarization
from mtkd_jax.weighting import stochastic_moo
from mtkd_jax.weighting.defaults import default_config

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


def get_method(name: str) -> base.WeightingMethod:
  """The weighting method `name`; a ConfigError lists the valid names."""
  return registry.lookup(METHODS, name, "weighting method")()
