r"""Every architecture that fits a dataset's tasks, three seeds.

  python -m experiments.ablation --config configs/census_mmoe.py --config.data.data_dir=../shared/data/census-income-kdd --sweep configs/sweeps/architectures.py --workdir /tmp/mtkd/ablations/census_architectures --vmap_seeds
  python -m experiments.ablation --config configs/movielens_mmoe.py --config.data.data_dir=../shared/data/ml-100k --sweep configs/sweeps/architectures.py --workdir /tmp/mtkd/ablations/movielens_architectures --vmap_seeds

ESMM and AITM model a click -> conversion chain of binary tasks (pCTCVR =
pCTR x pCVR; the calibrator asks p_2 <= p_1), which neither Census-Income
(income, marital) nor MovieLens (rating, like) has; they run on the
synthetic and Ali-CCP / AliExpress configs instead. `:<a>,<b>` restricts the
architectures.
"""
from mtkd_jax import errors
from mtkd_jax import sweeps

ARCHITECTURES = ("single_task", "shared_bottom", "omoe", "mmoe", "ple",
                 "cross_stitch", "dselect_k")
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
  from mtkd_jax import models  # pylint: disable=g-import-not-at-top
  names = arg.split(",") if arg else list(ARCHITECTURES)
  unknown = [n for n in names if n not in models.MODELS]
  if unknown:
    raise errors.ConfigError(f"Unknown model(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(models.MODELS))}.")
  return sweeps.product(**{"model.name": names}, seed=list(SEEDS))
