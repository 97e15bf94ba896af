r"""Teacher, student and distilled student of a distillation config, five seeds.

  python -m experiments.ablation --config configs/movielens_kd.py --config.data.data_dir=/path/to/ml-100k --sweep configs/sweeps/distillation.py:configs/movielens_kd.py --workdir /tmp/mtkd/ablations/movielens_kd

The argument is the distillation config file (`<file>:smoke`: one seed of
the smoke variants; pass the `:smoke` config as --config too); its `:teacher` and `:student`
variants give the overrides of the runs named `teacher` and `student`
(their `model.*` keys, with distillation off); `student_kd` is the config as
it is, distilling from "{parent}/teacher__seed={seed}", the teacher of the
same seed in this sweep. `<file>:seeds=N` runs seeds 0..N-1 instead of
five. `<file>:settings` adds, after those three, distilled students with
other distillation settings (SETTINGS: temperature, KD weight alpha, Platt-
calibrated teacher), each named by its overrides, all distilling from the
same teachers; docs/reproductions.md reports them. Runs go in sweep order
(teachers first), so run the sweep with the default --parallel 1 and
without --vmap_seeds: vmapped teachers write no best checkpoint, so the
distilled students would find no teacher to load.
"""
import importlib.util
import os

from mtkd_jax import errors
from mtkd_jax import sweeps

SEEDS = sweeps.DEFAULT_SEEDS
# `:settings`: name -> distill.* overrides of extra distilled students.
SETTINGS = {
    "kd_alpha=0.9": {"distill.alpha": 0.9},
    "kd_T=2": {"distill.temperature": 2.0},
    "kd_T=2_alpha=0.9": {"distill.temperature": 2.0, "distill.alpha": 0.9},
    "kd_calibrated": {"distill.calibrate": True},
}


def _load(path):
  if not path or not os.path.exists(path):
    raise errors.ConfigError(
        f"The distillation sweep needs its config file as argument, e.g. "
        f"configs/sweeps/distillation.py:configs/movielens_kd.py; got {path!r}.")
  spec = importlib.util.spec_from_file_location("distill_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


def _model_overrides(config):
  return {f"model.{k}": tuple(v) if isinstance(v, list) else v
          for k, v in config.model.to_dict().items()
          if v is not None}  # None: the model's own default


def get_sweep(arg=None):
  arg, seeds = sweeps.split_seeds_option(arg, SEEDS)
  path, _, option = (arg or "").partition(":")
  if option not in ("", "smoke", "settings"):
    raise errors.ConfigError(
        f"Unknown distillation sweep option {option!r}; valid: smoke (one "
        "seed, the smoke configs), settings (adds SETTINGS), seeds=N.")
  smoke = option == "smoke"
  get_config = _load(path)
  suffix = "_smoke" if smoke else ""
  off = {"distill.teacher_workdirs": ()}
  teacher = {**_model_overrides(get_config("teacher" + suffix)), **off}
  student = {**_model_overrides(get_config("student" + suffix)), **off}
  variants = [sweeps.named("teacher", teacher),
              sweeps.named("student", student),
              sweeps.named("student_kd", {})]
  if option == "settings":
    variants += [sweeps.named(name, overrides)
                 for name, overrides in SETTINGS.items()]
  return sweeps.product(sweeps.chain(*variants),
                        sweeps.seeds((0,) if smoke else seeds))
