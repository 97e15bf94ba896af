"""Distillation as one object a run builds: extra params, extra terms, weights.

This module is the whole interface between training (`mtkd_jax.train`) and
distillation; nothing in `mtkd_jax.distill` imports `mtkd_jax.train`.

A run does three things with it:
  model = plugin.student_model(model, spec, config)   # DML peers, if on
  distill = plugin.build(config, splits, spec, model, params, example_batch,
                         predict=..., replicate=...,
                         table_row_multiple=..., workdir=...)
  params = distill.add_params(params)                  # + the hint projector
and then gives the step `distill.spec` (the extra loss terms and every
term's fixed weight: `term_names`, `fixed_weights`, `step_targets`,
`per_example_terms`) and passes `*distill.step_args` (the frozen teachers'
params, online mode) after the batch. The step sees terms, not teachers.
"""
from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd_jax.data import specs as specs_lib
from mtkd_jax.distill import methods
from mtkd_jax.distill import mutual
from mtkd_jax.distill import setup
from mtkd_jax.distill import teacher as teacher_lib
from mtkd_jax.distill import terms
from mtkd_jax.models import base as model_base

# Top-level param subtrees distillation adds to the student (the FitNets
# projector): trained with it, each belonging to its own term (task-specific
# for gradient weighting), not part of the served model (not counted).
EXTRA_PARAMS = (terms.HINT_PARAMS,)


class Distillation(NamedTuple):
  """What distillation adds to a run (`build`); empty fields when it is off.

  Attributes:
    spec: the extra loss terms and their weights, static in the step (a
      `terms.DistillSpec`; None when no term is added).
    teachers: the frozen `teacher.Teacher`s (for reports).
    extra_params: {name: params} to add to the student's params.
    step_args: the step's arguments after the batch: (the teachers' params
      on the devices,) in online mode, else ().
    train_columns: the training split, with the teachers' targets as
      columns "teacher/<name>" in offline mode.
  """
  spec: Optional[terms.DistillSpec]
  teachers: Tuple[teacher_lib.Teacher, ...]
  extra_params: dict
  step_args: tuple
  train_columns: dict

  @property
  def online(self) -> bool:
    return bool(self.step_args)

  @property
  def teacher_params(self):
    return self.step_args[0] if self.step_args else None

  def add_params(self, params):
    """The student's params with `extra_params` (the same object if none)."""
    return {**params, **self.extra_params} if self.extra_params else params


def student_model(model: nn.Module, spec: specs_lib.DatasetSpec, config
                  ) -> nn.Module:
  """The model the run trains: `model`, or K DML peers of it."""
  return mutual.maybe_wrap(model, spec, config)


def needs_teachers_or_peers(config) -> bool:
  """Whether the config's distillation holds per-run state (teachers, DML
  peers, CrossDistil ranking terms), so that seeds cannot share a program."""
  if "distill" not in config:
    return False
  dcfg = methods.resolve_methods(config.distill)
  return bool(dcfg.teacher_workdirs or dcfg.dml_peers or
              dcfg.crossdistil_ranking_weight)


def _hint_projector(config, dspec, teachers, model, params, example_batch):
  """Initial params of the FitNets projector, from the shapes of the
  student's and the first teacher's `hint_feature`."""
  targets = jax.eval_shape(
      lambda tp: terms.teacher_targets(tp, example_batch, dspec),
      tuple(t.params for t in teachers))
  _, student_aux = jax.eval_shape(
      lambda p: model.apply({"params": p}, example_batch, train=False), params)
  feature = model_base.aux_feature(student_aux, dspec.hint_feature,
                                   "The student")
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x417)
  return terms.init_hint_projector(
      rng, jnp.zeros(feature.shape), jnp.zeros(targets[terms.FEATURES].shape))


def build(config, splits, spec: specs_lib.DatasetSpec, model: nn.Module,
          params, example_batch, *, predict: setup.Predict,
          replicate: Callable[[Any], Any],
          table_row_multiple: Callable[[Any], int],
          workdir: str = ".") -> Distillation:
  """Everything distillation adds to a run; empty when it is off.

  Args:
    config: the run's config (its `distill` block).
    splits: the loaded dataset (`specs.Splits`).
    spec: the student's dataset spec (with its task overrides).
    model: the student (`student_model`); params: its initial params.
    example_batch: a host batch (shapes only).
    predict: runs a per-device function over a split (`setup.Predict`).
    replicate: puts a host pytree on the run's devices.
    table_row_multiple: a run's config -> the multiple its tables' rows are
      padded to (`teacher.load_teacher`).
    workdir: the student's workdir (teacher workdirs may name "{parent}").
  """
  dcfg = methods.resolve_methods(config.distill)
  workdirs = setup.resolve_workdirs(dcfg.teacher_workdirs, workdir, config.seed)
  names = tuple(dcfg.tasks) or spec.task_names
  for name in names:
    spec.task(name)  # unknown task names list the valid ones
  teachers = tuple(teacher_lib.load_teacher(
      w, config, splits.spec, splits.extras, names,
      table_row_multiple=table_row_multiple) for w in workdirs)
  if dcfg.calibrate:
    teachers = tuple(setup.calibrate(t, splits.validation, spec, predict)
                     for t in teachers)
  dspec = terms.make_distill_spec(dcfg, spec, teachers)
  if dspec is None:
    return Distillation(None, (), {}, (), splits.train)
  extra = {}
  if dspec.hint_feature:
    extra[terms.HINT_PARAMS] = _hint_projector(config, dspec, teachers, model,
                                               params, example_batch)
  train_columns, step_args = splits.train, ()
  if dspec.uses_teachers and dspec.offline:
    train_columns = {**splits.train, **setup.offline_targets(
        dspec, teachers, splits.train, predict)}
  elif dspec.uses_teachers:
    step_args = (replicate(tuple(t.params for t in teachers)),)
  return Distillation(dspec, teachers, extra, step_args, train_columns)
