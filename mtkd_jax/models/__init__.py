"""Model registry: `build_model(spec, model_config)` selects a module by name.

To add a model, write a linen module whose `__call__(batch, *, train)` returns
`({task: float[B]}, aux)` and add one line to `MODELS`.
"""
from typing import Callable, Dict, Optional

import flax.linen as nn

from mtkd_jax import errors
from mtkd_jax import registry
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import sequence as sequence_lib
from mtkd_jax.models.conversion import AITM
from mtkd_jax.models.conversion import ESMM
from mtkd_jax.models.gated import DSelectK
from mtkd_jax.models.gated import OMoE
from mtkd_jax.models.gated import PLE
from mtkd_jax.models.mtl import MMoE
from mtkd_jax.models.mtl import SharedBottom
from mtkd_jax.models.multicolumn import CrossStitch
from mtkd_jax.models.multicolumn import SingleTask
from mtkd_jax.models.retrieval import Catalogue
from mtkd_jax.models.retrieval import TwoTowerMTL


def _shared_bottom(spec, cfg):
  return SharedBottom(spec, bottom_hidden=tuple(cfg.bottom_hidden),
                      tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


def _mmoe(spec, cfg):
  return MMoE(spec, num_experts=cfg.num_experts,
              expert_hidden=tuple(cfg.expert_hidden),
              tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


def _omoe(spec, cfg):
  return OMoE(spec, num_experts=cfg.num_experts,
              expert_hidden=tuple(cfg.expert_hidden),
              tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


def _ple(spec, cfg):
  return PLE(spec, num_levels=cfg.num_levels,
             num_shared_experts=cfg.num_shared_experts,
             num_specific_experts=cfg.num_specific_experts,
             expert_hidden=tuple(cfg.expert_hidden),
             tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


def _dselect_k(spec, cfg):
  return DSelectK(spec, num_experts=cfg.num_experts,
                  num_selectors=cfg.dselect_k, gamma=cfg.dselect_gamma,
                  entropy_reg=cfg.dselect_entropy_reg,
                  expert_hidden=tuple(cfg.expert_hidden),
                  tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


def _esmm(spec, cfg):
  # Each ESMM / AITM tower is a whole base network: bottom + tower layers.
  return ESMM(spec, tasks=tuple(cfg.esmm_tasks),
              tower_hidden=tuple(cfg.bottom_hidden) + tuple(cfg.tower_hidden),
              dropout=cfg.dropout)


def _aitm(spec, cfg):
  return AITM(spec,
              tower_hidden=tuple(cfg.bottom_hidden) + tuple(cfg.tower_hidden),
              calibration_weight=cfg.aitm_calibration_weight,
              dropout=cfg.dropout)


def _cross_stitch(spec, cfg):
  return CrossStitch(spec, column_hidden=tuple(cfg.bottom_hidden),
                     tower_hidden=tuple(cfg.tower_hidden),
                     alpha_init=cfg.cross_stitch_init,
                     dropout=cfg.dropout)


def _single_task(spec, cfg):
  return SingleTask(spec, bottom_hidden=tuple(cfg.bottom_hidden),
                    tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout)


def _two_tower_mtl(spec, cfg, extras=None):
  catalogue = (extras or {}).get("catalogue")
  return TwoTowerMTL(
      spec, catalogue=None if catalogue is None else Catalogue(catalogue),
      num_experts=cfg.num_experts, expert_hidden=tuple(cfg.expert_hidden),
      tower_hidden=tuple(cfg.tower_hidden), dropout=cfg.dropout,
      two_tower_hidden=tuple(cfg.two_tower_hidden),
      retrieval_dim=cfg.retrieval_dim,
      temperature=cfg.retrieval_temperature)


_two_tower_mtl.takes_extras = True  # reads Splits.extras["catalogue"]

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "shared_bottom": _shared_bottom,
    "mmoe": _mmoe,
    "omoe": _omoe,
    "ple": _ple,
    "dselect_k": _dselect_k,
    "esmm": _esmm,
    "aitm": _aitm,
    "cross_stitch": _cross_stitch,
    "single_task": _single_task,
    "two_tower_mtl": _two_tower_mtl,
}


def build_model(spec: specs_lib.DatasetSpec, cfg,
                extras: Optional[dict] = None) -> nn.Module:
  """Builds `MODELS[cfg.name](spec, cfg)`; unknown names list the valid ones.

  The spec's sequence fields first take their encoder from the config
  (`sequence.configure_spec`), so any model gets any sequence encoder.
  Factories marked `takes_extras` (two_tower_mtl: the item catalogue) also
  get the dataset's `Splits.extras`. A model that is not built for retrieval
  tasks refuses a spec with one.
  """
  spec = sequence_lib.configure_spec(spec, cfg)
  factory = registry.lookup(MODELS, cfg.name, "model")
  if getattr(factory, "takes_extras", False):
    return factory(spec, cfg, extras)
  retrieval = [t.name for t in spec.tasks if t.kind == "retrieval"]
  if retrieval:
    raise errors.ConfigError(
        f"Model {cfg.name!r} has no retrieval head for tasks {retrieval}; "
        "use --config.model.name=two_tower_mtl.")
  return factory(spec, cfg)
