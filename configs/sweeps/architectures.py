r"""Every architecture that fits a dataset's tasks, five seeds.

  python -m experiments.ablation --config configs/census_mmoe.py --config.data.data_dir=/path/to/census-income-kdd --sweep configs/sweeps/architectures.py --workdir /tmp/mtkd/ablations/census_architectures --vmap_seeds
  python -m experiments.ablation --config configs/movielens_mmoe.py --config.data.data_dir=/path/to/ml-100k --sweep configs/sweeps/architectures.py --workdir /tmp/mtkd/ablations/movielens_architectures --vmap_seeds
  python -m experiments.ablation --config configs/movielens_esmm.py --config.data.data_dir=/path/to/ml-100k --sweep configs/sweeps/architectures.py:funnel --workdir /tmp/mtkd/ablations/movielens_conversion --vmap_seeds

ESMM and AITM model a click -> conversion chain of binary tasks: the second
label implies the first (pCTCVR = pCTR x pCVR; AITM's calibrator asks
p_2 <= p_1). The default list leaves them out, since neither Census-Income
(income, marital) nor MovieLens's default tasks (rating, like) are such a
chain. MovieLens-100K has one in `data.task_group="like_love"` (like =
rating >= 4, then love = rating == 5; configs/movielens_esmm.py), and the
`:funnel` list runs ESMM and AITM there beside the single-task, shared-bottom
and MMoE baselines on the same two tasks. Census-Income has none: no pair of
its three labels (income > 50K, never married, at least college) nests. In
the 99,762-row file the closest implication, income > 50K => college, fails
for 2,011 of the 6,186 rows above 50K (33%); each of the other five fails
for more than 78% of the rows that have the implying label. ESMM / AITM also
run on the synthetic and Ali-CCP / AliExpress click -> conversion configs.
`:<a>,<b>` restricts the architectures; `:seeds=N` (alone or after the
list, e.g. `:shared_bottom,mmoe,ple:seeds=6`) runs seeds 0..N-1.
"""
from mtkd_jax import errors
from mtkd_jax import sweeps

ARCHITECTURES = ("single_task", "shared_bottom", "omoe", "mmoe", "ple",
                 "cross_stitch", "dselect_k")
# `:funnel`: for a chain of binary tasks (e.g. configs/movielens_esmm.py).
FUNNEL_ARCHITECTURES = ("single_task", "shared_bottom", "mmoe", "esmm", "aitm")
SEEDS = sweeps.DEFAULT_SEEDS


def get_sweep(arg=None):
  from mtkd_jax import models  # pylint: disable=g-import-not-at-top
  arg, seeds = sweeps.split_seeds_option(arg, SEEDS)
  if arg == "funnel":
    names = list(FUNNEL_ARCHITECTURES)
  else:
    names = arg.split(",") if arg else list(ARCHITECTURES)
  unknown = [n for n in names if n not in models.MODELS]
  if unknown:
    raise errors.ConfigError(f"Unknown model(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(models.MODELS))}, or the list "
                             "'funnel'.")
  return sweeps.product(**{"model.name": names}, seed=list(seeds))
