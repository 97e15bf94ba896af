r"""Architecture x loss-weighting method on Census-Income.

  python -m experiments.ablation --config configs/census_mmoe.py \
      --sweep configs/sweeps/census_weighting.py \
      --workdir /tmp/mtkd/ablations/census_weighting --parallel 2
  python -m experiments.report /tmp/mtkd/ablations/census_weighting \
      --baseline model.name=mmoe__weighting.name=ew

MMoE, PLE and Shared-Bottom, each with every weighting method registered in
mtkd_jax.weighting.METHODS (read when the sweep loads), seeds 0-4; plus a
single-task model (equal weights) as the reference of Δm.
`:<m1>,<m2>` restricts the methods, e.g. `census_weighting.py:ew,uw`.
"""
from mtkd_jax import errors
from mtkd_jax import sweeps

MODELS = ("mmoe", "ple", "shared_bottom")
SEEDS = sweeps.DEFAULT_SEEDS


def get_sweep(arg=None):
  from mtkd_jax import models  # pylint: disable=g-import-not-at-top
  from mtkd_jax import weighting  # pylint: disable=g-import-not-at-top
  methods = sorted(weighting.METHODS)
  if arg:
    wanted = arg.split(",")
    unknown = [m for m in wanted if m not in weighting.METHODS]
    if unknown:
      raise errors.ConfigError(f"Unknown weighting method(s) "
                               f"{', '.join(unknown)}; valid: "
                               f"{', '.join(methods)}.")
    methods = wanted
  missing = [m for m in MODELS + ("single_task",) if m not in models.MODELS]
  if missing:
    raise errors.ConfigError(f"The census_weighting sweep needs model(s) "
                             f"{', '.join(missing)} in mtkd_jax.models.MODELS.")
  return sweeps.chain(
      sweeps.product(**{"model.name": list(MODELS), "weighting.name": methods},
                     seed=list(SEEDS)),
      # Gradient diagnostics fail on a model without shared parameters
      # (empty Gram matrix); they do not change training.
      sweeps.product(**{"model.name": ["single_task"],
                        "weighting.name": ["ew"],
                        "weighting.diagnostics_every": [0]},
                     seed=list(SEEDS)))
