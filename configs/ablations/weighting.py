r"""Every weighting method on Census-Income with MMoE, five seeds.

  python -m experiments.ablation --config configs/census_mmoe.py --config.data.data_dir=/path/to/census-income-kdd --sweep configs/ablations/weighting.py --workdir /tmp/mtkd/ablations/census_methods --vmap_seeds
  python -m experiments.report /tmp/mtkd/ablations/census_methods --baseline name=ew --metrics income/auc,marital/auc,mean/auc --out docs/ablations/census_weighting

The README's weighting table. `:<m1>,<m2>` restricts the methods.
"""
from mtkd_jax import errors
from mtkd_jax import sweeps

SEEDS = sweeps.DEFAULT_SEEDS


def get_sweep(arg=None):
  from mtkd_jax import weighting  # pylint: disable=g-import-not-at-top
  methods = sorted(weighting.METHODS)
  if arg:
    unknown = [m for m in arg.split(",") if m not in weighting.METHODS]
    if unknown:
      raise errors.ConfigError(f"Unknown weighting method(s) {', '.join(unknown)}; "
                               f"valid: {', '.join(methods)}.")
    methods = arg.split(",")
  return sweeps.product(**{"weighting.name": methods}, seed=list(SEEDS))
