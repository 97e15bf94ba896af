"""`distill.method`: named distillation methods as presets of the knobs.

A method name turns on the knobs that define it (e.g. "hint" sets
`distill.hint_weight`), on top of the ones a config sets explicitly.
Imports nothing else of `mtkd_jax.distill`, so every module there can read
a config through it.
"""
import ml_collections

from mtkd_jax import errors

# `distill.method`: names (comma-separated to combine) -> the knobs each one
# turns on, on top of the explicit ones (a knob already set keeps its value).
METHODS = {
    "soft_target": {},  # kd/<task>: T^2 KL soft targets (the default)
    "logit_matching": {"loss": "logit_mse"},  # kd/<task>: logit MSE
    "listwise": {"listwise": "listnet"},  # + kd/list/<task>, ListNet per user
    "pairwise": {"listwise": "ranknet"},  # + kd/list/<task>, RankNet per user
    "ranking": {"ranking_weight": 1.0},  # + kd/rank/<task> (Tang & Wang)
    "hint": {"hint_weight": 1.0},  # + kd/hint (FitNets)
    "crossdistil": {"calibrate": True},  # Platt-calibrated teachers
    "crossdistil_teacher": {"crossdistil_ranking_weight": 1.0},  # rank/<task>
    "dml": {"dml_peers": 2},  # K peers, kd/dml/<task>
}
_UNSET = {"loss": "auto", "listwise": "", "ranking_weight": 0.0,
          "hint_weight": 0.0, "calibrate": False,
          "crossdistil_ranking_weight": 0.0, "dml_peers": 0}


def resolve_methods(dcfg):
  """A copy of the `distill` block with `distill.method`'s knobs applied.

  E.g. method "soft_target,hint" sets hint_weight 1.0 unless the config
  already sets another weight. Unknown names list the valid ones.
  """
  out = dcfg.to_dict() if hasattr(dcfg, "to_dict") else dict(dcfg)
  names = [n.strip() for n in str(out.get("method", "soft_target")).split(",")
           if n.strip()]
  for name in names:
    if name not in METHODS:
      raise errors.ConfigError(
          f"Unknown distill.method {name!r}; valid: {', '.join(METHODS)} "
          "(comma-separated to combine).")
    for key, value in METHODS[name].items():
      if out.get(key, _UNSET[key]) == _UNSET[key]:
        out[key] = value
  return ml_collections.ConfigDict(out)
