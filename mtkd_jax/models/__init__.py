"""Model registry: `build_model(spec, model_config)` selects a module by name.

To add a model, write a linen module whose `__call__(batch, *, train)` returns
`({task: float[B]}, aux)` and add one line to `MODELS`.
"""
from typing import Callable, Dict

import flax.linen as nn

from mtkd_jax import registry
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models.mtl import MMoE
from mtkd_jax.models.mtl import SharedBottom


def _shared_bottom(spec, cfg):
  return SharedBottom(spec, bottom_hidden=tuple(cfg.bottom_hidden),
                      tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


def _mmoe(spec, cfg):
  return MMoE(spec, num_experts=cfg.num_experts,
              expert_hidden=tuple(cfg.expert_hidden),
              tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "shared_bottom": _shared_bottom,
    "mmoe": _mmoe,
}


def build_model(spec: specs_lib.DatasetSpec, cfg) -> nn.Module:
  """Builds `MODELS[cfg.name](spec, cfg)`; unknown names list the valid ones."""
  return registry.lookup(MODELS, cfg.name, "model")(spec, cfg)
