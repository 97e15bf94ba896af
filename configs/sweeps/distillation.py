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
same teachers; `<file>:sizes` adds larger students, alone and distilled
(`student_w<m>`, `student_w<m>_kd` for each width multiplier m in SIZES:
every hidden width in which the student and the teacher differ, times m,
not capped at the teacher's: on Census-Income the 16x student's towers
have 64 units to the teacher's 32, with a quarter of its parameters),
again from the same teachers. Options combine (`<file>:settings:sizes`);
docs/reproductions.md reports them. Runs go in sweep order
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
# `:sizes`: multipliers of the student's hidden widths (x4 and x16 give the
# Census-Income student 3.6x and 16x its non-embedding parameters, the
# MovieLens one, whose experts have two layers, 5.6x and 51x).
SIZES = (4, 16)
OPTIONS = ("smoke", "settings", "sizes")


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


def _widened(student, teacher, multiplier):
  """The student's `model.*` overrides, widths differing from the teacher's
  times `multiplier`."""
  def is_widths(value):
    return isinstance(value, tuple) and all(isinstance(v, int) for v in value)
  widened = {key: tuple(multiplier * v for v in value)
             for key, value in student.items()
             if is_widths(value) and value != teacher.get(key)}
  if not widened:
    raise errors.ConfigError("The student's hidden widths equal the teacher's; "
                             "the sizes option has nothing to widen.")
  return {**student, **widened}


def get_sweep(arg=None):
  arg, seeds = sweeps.split_seeds_option(arg, SEEDS)
  path, _, option = (arg or "").partition(":")
  options = set(option.split(":")) - {""}
  if options - set(OPTIONS):
    raise errors.ConfigError(
        f"Unknown distillation sweep option(s) "
        f"{', '.join(sorted(options - set(OPTIONS)))}; valid: smoke (one "
        "seed, the smoke configs), settings (adds SETTINGS), sizes (adds "
        "SIZES), seeds=N.")
  smoke = "smoke" in options
  get_config = _load(path)
  suffix = "_smoke" if smoke else ""
  off = {"distill.teacher_workdirs": ()}
  teacher = {**_model_overrides(get_config("teacher" + suffix)), **off}
  student = {**_model_overrides(get_config("student" + suffix)), **off}
  variants = [sweeps.named("teacher", teacher),
              sweeps.named("student", student),
              sweeps.named("student_kd", {})]
  if "settings" in options:
    variants += [sweeps.named(name, overrides)
                 for name, overrides in SETTINGS.items()]
  if "sizes" in options:
    for multiplier in SIZES:
      wide = _widened(student, teacher, multiplier)
      wide_kd = {k: v for k, v in wide.items() if k not in off}
      variants += [sweeps.named(f"student_w{multiplier}", wide),
                   sweeps.named(f"student_w{multiplier}_kd", wide_kd)]
  return sweeps.product(sweeps.chain(*variants),
                        sweeps.seeds((0,) if smoke else seeds))
