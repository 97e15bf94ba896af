r"""The MMoE paper's synthetic study (Ma et al., KDD 2018, §3.2, Fig. 3-4).

  python -m experiments.ablation --config configs/mmoe_synthetic.py \
      --sweep configs/sweeps/mmoe_synthetic.py \
      --workdir /tmp/mtkd/ablations/mmoe_synthetic [--vmap_seeds]
  python -m experiments.report /tmp/mtkd/ablations/mmoe_synthetic \
      --baseline correlation=1.0__name=mmoe --out docs/ablations/mmoe_synthetic

Shared-Bottom vs OMoE vs MMoE on the two synthetic regression tasks at task
correlation p in {0.5, 0.9, 1.0}, 6 seeds each (init and data order; the
data itself is fixed by data.seed). A single-task model (one network per
task) runs too, as the reference of Δm. Report: final test RMSE per task,
metric vs p, and the training-loss curves per p (the paper's Fig. 4).

`:quick` is 2 seeds and p in {0.5, 1.0} (a check that everything runs).
Every model must be registered in mtkd_jax.models.MODELS; a missing one
stops the sweep before any run starts.
"""
from mtkd_jax import errors
from mtkd_jax import sweeps

MODELS = ("shared_bottom", "omoe", "mmoe", "single_task")
CORRELATIONS = (0.5, 0.9, 1.0)
# Six seeds: the smallest n at which a two-sided Wilcoxon test can reach
# p < 0.05 (2 / 2**6 = 0.031).
SEEDS = tuple(range(6))


def get_sweep(arg=None):
  from mtkd_jax import models  # pylint: disable=g-import-not-at-top
  missing = [m for m in MODELS if m not in models.MODELS]
  if missing:
    raise errors.ConfigError(
        f"The mmoe_synthetic sweep needs model(s) {', '.join(missing)}, not "
        f"registered in mtkd_jax.models.MODELS (have: "
        f"{', '.join(sorted(models.MODELS))}).")
  correlations, seeds = CORRELATIONS, SEEDS
  if arg == "quick":
    correlations, seeds = (0.5, 1.0), (0, 1)
  elif arg:
    raise ValueError(f"Unknown sweep argument {arg!r}; valid: quick.")
  sweep = sweeps.product(**{"data.correlation": list(correlations),
                            "model.name": list(MODELS)},
                         seed=list(seeds))
  for entry in sweep:
    if entry["model.name"] == "single_task":
      # step.gradient_diagnostics fails on a model without shared parameters
      # (empty Gram matrix); the diagnostics do not change training.
      entry["weighting.diagnostics_every"] = 0
  return sweep
