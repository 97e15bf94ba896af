"""Model registry: `build_model(spec, model_config)` selects a model by name.

`MODELS[name]` is a linen Module class following the contract of
`models/base.py`; it is built as `MODELS[name](spec, **knobs)`, its knobs
(dataclass fields with defaults) read from `config.model.<knob>`. To add a
model: one module file, one line in `MODELS`, its test.
"""
from typing import Any, Dict, Optional

import flax.linen as nn
import ml_collections
from ml_collections import config_dict

from mtkd_jax import errors
from mtkd_jax import registry
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import sequence as sequence_lib
from mtkd_jax.models.conversion import AITM
from mtkd_jax.models.conversion import ESMM
from mtkd_jax.models.escm2 import ESCM2
from mtkd_jax.models.gated import DSelectK
from mtkd_jax.models.gated import OMoE
from mtkd_jax.models.gated import PLE
from mtkd_jax.models.metaheac import MetaHeac
from mtkd_jax.models.mtl import MMoE
from mtkd_jax.models.mtl import SharedBottom
from mtkd_jax.models.multicolumn import CrossStitch
from mtkd_jax.models.multicolumn import SingleTask
from mtkd_jax.models.retrieval import TwoTowerMTL
from mtkd_jax.models.stem import STEM

MODELS: Dict[str, type] = {
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "omoe": OMoE,
    "ple": PLE,
    "dselect_k": DSelectK,
    "esmm": ESMM,
    "aitm": AITM,
    "escm2": ESCM2,
    "cross_stitch": CrossStitch,
    "single_task": SingleTask,
    "two_tower_mtl": TwoTowerMTL,
    "stem": STEM,
    "metaheac": MetaHeac,
}

# Keys of config.model that every model takes: the behaviour-sequence
# encoder of the spec's sequence fields (`sequence.configure_spec`).
COMMON_KEYS = {
    "sequence_encoder": "mean",  # "mean", "gru", "cnn" (Caser) or "din"
    "sequence_hidden": 32,  # GRU state / Caser output width
    "din_hidden": (36,),  # DIN activation-unit MLP widths
}


def all_knobs() -> Dict[str, type]:
  """{knob: config type} over every registered model.

  Raises:
    TypeError: two models give one knob name different types.
  """
  types = {}
  for name, cls in MODELS.items():
    for knob, default in base.knobs(cls).items():
      kind = base.knob_type(default)
      if types.setdefault(knob, kind) is not kind:
        raise TypeError(f"Knob {knob!r} of model {name!r} is a {kind.__name__}; "
                        f"another model's is a {types[knob].__name__}.")
  return types


def default_config(name: str = "mmoe") -> ml_collections.ConfigDict:
  """`config.model`: the model's name, the common keys, and every
  registered model's knobs as typed placeholders (None: the model's own
  default), so `--config.model.<knob>=...` works for any model."""
  c = ml_collections.ConfigDict()
  c.name = name
  for key, value in COMMON_KEYS.items():
    c[key] = value
  for knob, kind in sorted(all_knobs().items()):
    c[knob] = config_dict.placeholder(kind)
  return c


def check_config(cfg) -> None:
  """Raises ConfigError on an unknown model name or config.model key."""
  cls = registry.lookup(MODELS, cfg.name, "model")
  valid = set(all_knobs()) | set(COMMON_KEYS) | {"name"}
  unknown = sorted(set(cfg.keys()) - valid)
  if unknown:
    raise errors.ConfigError(
        f"Unknown config.model key(s) {', '.join(unknown)}; model "
        f"{cfg.name!r} takes: {', '.join(sorted(base.knobs(cls)))} (and "
        f"{', '.join(sorted(COMMON_KEYS))}; other models' knobs: "
        f"{', '.join(sorted(set(all_knobs()) - set(base.knobs(cls))))}).")


def model_kwargs(cfg) -> Dict[str, Any]:
  """The knobs of model `cfg.name` that `cfg` sets (not None); keys of other
  models' knobs are left out, so a sweep can switch `model.name`."""
  cls = registry.lookup(MODELS, cfg.name, "model")
  own = base.knobs(cls)
  out = {}
  for key, value in cfg.items():
    if key in own and value is not None:
      out[key] = tuple(value) if isinstance(value, list) else value
  return out


def build_model(spec: specs_lib.DatasetSpec, cfg,
                extras: Optional[dict] = None) -> nn.Module:
  """`MODELS[cfg.name](spec, **knobs)`; unknown names and keys list the
  valid ones.

  The spec's sequence fields first take their encoder from the config
  (`sequence.configure_spec`), so any model gets any sequence encoder.
  A model with `dataset_extras` (two_tower_mtl: the item catalogue) gets
  them from the dataset's `Splits.extras`. A model that is not built for
  retrieval tasks refuses a spec with one.
  """
  check_config(cfg)
  spec = sequence_lib.configure_spec(spec, cfg)
  cls = MODELS[cfg.name]
  kwargs = model_kwargs(cfg)
  if hasattr(cls, "from_extras"):
    kwargs.update(cls.from_extras(extras))
  retrieval = [t.name for t in spec.tasks if t.kind == "retrieval"]
  if retrieval and not getattr(cls, "supports_retrieval", False):
    raise errors.ConfigError(
        f"Model {cfg.name!r} has no retrieval head for tasks {retrieval}; "
        "use --config.model.name=two_tower_mtl.")
  return cls(spec, **kwargs)
