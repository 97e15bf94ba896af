"""Distillation loss terms of the train step, named like tasks.

A distillation run adds named loss terms next to the task terms, so the
weighting methods balance them like tasks (`mtkd_jax.train.step`):
  kd/<task>        soft targets of the teacher(s) for one task: the binary
                   (Bernoulli) KL for binary heads, the softmax KL for
                   multiclass heads (both T^2-scaled, Hinton et al. 2015),
                   prediction MSE for regression heads, or `distill.loss`;
  kd/list/<task>   ListNet / RankNet between teacher and student scores of
                   the rows of one user in the batch (`distill.listwise`);
  kd/rank/<task>   ranking distillation (Tang & Wang 2018) of a retrieval
                   task: the teacher's top-K in-batch items as weighted
                   extra positives;
  kd/hint          FitNets: a learned linear projector (params
                   "hint_projector") from the student's `hint_feature` to the
                   teacher's, L2;
  rank/<task>      CrossDistil's augmented cross-task ranking loss (Yang et
                   al. 2022), on the run that trains the teacher.
Fixed weights: a distilled task's hard term gets (1 - alpha) w_t, its
kd/<task> term alpha w_t; the others their own `*_weight`.

Teacher targets come from `teacher_targets` (several teachers are combined by
`ensemble_logits`), computed inside the compiled step (online) or once over
the training rows (offline, as columns "teacher/<task>", "teacher/features");
both read the same function, so the two modes give the same student.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import errors
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.distill import methods
from mtkd_jax.distill import teacher as teacher_lib
from mtkd_jax.losses import distillation as kd
from mtkd_jax.models import base as model_base

HINT_PARAMS = "hint_projector"
FEATURES = "features"
LISTWISE = {"listnet": kd.listwise_kd, "ranknet": kd.pairwise_kd}
AUTO_LOSS = {"binary": "soft_bce", "multiclass": "soft_ce",
             "regression": "logit_mse"}


@dataclasses.dataclass(frozen=True, eq=False)
class DistillSpec:
  """The static pieces of distillation in a step (hashable by identity).

  Attributes:
    teacher_models: the teachers' linen modules (empty when only
      CrossDistil ranking terms or DML are on).
    ensemble_weights: task -> float[K] weights of the teachers.
    calibration: per teacher, task -> (a, b) applied as a*z + b to its
      binary logits before combining (Platt scaling).
    tasks: the distilled tasks (TaskSpecs).
    losses: task -> KD loss name (`distillation.KD_LOSSES`).
    offline: teacher targets come from batch columns "teacher/<task>".
  """
  teacher_models: Tuple[nn.Module, ...] = ()
  ensemble_weights: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  calibration: Tuple[Mapping[str, Tuple[float, float]], ...] = ()
  tasks: Tuple[specs_lib.TaskSpec, ...] = ()
  losses: Mapping[str, str] = dataclasses.field(default_factory=dict)
  offline: bool = False
  temperature: float = 1.0
  ensemble_space: str = "logit"
  hint_feature: str = ""
  listwise: str = ""
  ranking_k: int = 10
  ranking_lambda: float = 5.0
  ranking: bool = False
  crossdistil_tasks: Tuple[str, ...] = ()
  sparse_fields: Tuple[specs_lib.SparseField, ...] = ()
  term_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  alpha: float = 0.0

  @property
  def uses_teachers(self) -> bool:
    return bool(self.tasks or self.hint_feature)

  # What the train step reads: the extra terms' names, every term's fixed
  # weight, and the terms' per-example values.

  def term_names(self) -> Tuple[str, ...]:
    return tuple(self.term_weights)

  def fixed_weights(self, tasks: Sequence[specs_lib.TaskSpec]
                    ) -> Dict[str, float]:
    """term -> fixed weight, the task terms included: a distilled task's
    hard term (1 - alpha) w_t, any other task w_t; then `term_weights`."""
    fixed = {t.name: t.weight * (1.0 - self.alpha
                                 if f"kd/{t.name}" in self.term_weights
                                 else 1.0)
             for t in tasks}
    fixed.update(self.term_weights)
    return fixed

  def step_targets(self, batch, teacher_params=None):
    """The teachers' outputs on `batch` (None when no term reads them):
    computed here (online, from the step's `teacher_params` argument) or
    read from the batch's "teacher/<name>" columns (offline)."""
    if not self.uses_teachers:
      return None
    if self.offline:
      return targets_from_batch(batch, self)
    if teacher_params is None:
      raise ValueError("This step distils from teachers: call it with their "
                       "params (train_step(state, batch, teacher_params)).")
    return teacher_targets(teacher_params, batch, self)

  def per_example_terms(self, outputs, aux, params, batch, targets
                        ) -> Dict[str, jax.Array]:
    """term -> float[B], given the student's outputs and `step_targets`."""
    return per_example_terms(outputs, aux, params, batch, targets, self)


def make_distill_spec(dcfg, spec: specs_lib.DatasetSpec, teachers=(),
                      ) -> Optional[DistillSpec]:
  """The DistillSpec of a config's `distill` block; None when it is off.

  Args:
    dcfg: the `distill` config block.
    spec: the student's dataset spec (with its task overrides).
    teachers: `teacher.Teacher`s loaded from `dcfg.teacher_workdirs`.
  """
  dcfg = methods.resolve_methods(dcfg)
  crossdistil = dcfg.crossdistil_ranking_weight > 0
  if not teachers and not crossdistil:
    return None
  weights = {}
  ctasks = ()
  if crossdistil:
    binary = [t.name for t in spec.tasks if t.kind == "binary"]
    if len(binary) < 2:
      raise errors.ConfigError(
          "distill.crossdistil_ranking_weight needs two binary tasks (e.g. "
          f"click and conversion); binary tasks here: {binary or 'none'}.")
    ctasks = tuple(binary[:2])
    for name in ctasks:
      weights[f"rank/{name}"] = float(dcfg.crossdistil_ranking_weight)
  if not teachers:
    return DistillSpec(crossdistil_tasks=ctasks, term_weights=weights)

  names = tuple(dcfg.tasks) or spec.task_names
  tasks = tuple(spec.task(n) for n in names)
  if dcfg.mode not in ("online", "offline"):
    raise errors.ConfigError(f"distill.mode must be 'online' or 'offline', "
                             f"got {dcfg.mode!r}.")
  if dcfg.ensemble not in ("logit", "prob"):
    raise errors.ConfigError(f"Unknown distill.ensemble {dcfg.ensemble!r}; "
                             "valid: logit, prob.")
  if dcfg.listwise and dcfg.listwise not in LISTWISE:
    raise errors.ConfigError(f"Unknown distill.listwise {dcfg.listwise!r}; "
                             f"valid: {', '.join(LISTWISE)} (or '' for off).")
  if dcfg.listwise and not spec.has_user_id:
    raise errors.ConfigError(f"distill.listwise groups rows by user, but "
                             f"{spec.name} has no user ids.")
  if not 0.0 <= dcfg.alpha <= 1.0:
    raise errors.ConfigError(f"distill.alpha must be in [0, 1], got {dcfg.alpha}.")
  losses = {}
  for task in tasks:
    if task.kind == "retrieval":
      if dcfg.mode == "offline":
        raise errors.ConfigError(
            f"Retrieval task {task.name!r} is distilled from in-batch scores, "
            "which depend on the batch; use distill.mode='online' or leave it "
            "out of distill.tasks.")
      continue  # distilled by kd/rank/<task> (ranking_weight)
    name = AUTO_LOSS[task.kind] if dcfg.loss == "auto" else dcfg.loss
    kd.get_kd_loss(name)  # unknown names list the valid ones
    losses[task.name] = name
    weights[f"kd/{task.name}"] = float(dcfg.alpha) * task.weight
    if dcfg.listwise and task.kind in ("binary", "regression"):
      weights[f"kd/list/{task.name}"] = float(dcfg.listwise_weight)
  ranking = dcfg.ranking_weight > 0
  if ranking:
    retrieval = [t.name for t in tasks if t.kind == "retrieval"]
    if not retrieval:
      raise errors.ConfigError("distill.ranking_weight > 0 needs a retrieval "
                               "task among distill.tasks.")
    for name in retrieval:
      weights[f"kd/rank/{name}"] = float(dcfg.ranking_weight)
  if dcfg.hint_weight > 0:
    weights["kd/hint"] = float(dcfg.hint_weight)
  ens = {}
  for task in tasks:
    how = dcfg.ensemble_weights if len(teachers) > 1 else "uniform"
    if task.kind != "binary":  # AUC weights are defined for binary tasks
      how = "uniform" if how == "auc" else how
    ens[task.name] = teacher_lib.ensemble_weights(teachers, how, task.name,
                                                  kd.auc_weights)
  return DistillSpec(
      teacher_models=tuple(t.model for t in teachers), ensemble_weights=ens,
      calibration=tuple(t.calibration for t in teachers), tasks=tasks,
      losses=losses, offline=dcfg.mode == "offline",
      temperature=float(dcfg.temperature), ensemble_space=dcfg.ensemble,
      hint_feature=dcfg.hint_feature if dcfg.hint_weight > 0 else "",
      listwise=dcfg.listwise, ranking_k=int(dcfg.ranking_k),
      ranking_lambda=float(dcfg.ranking_lambda), ranking=ranking,
      crossdistil_tasks=ctasks, sparse_fields=spec.sparse,
      term_weights=weights, alpha=float(dcfg.alpha))


def _flat(x):
  return x.reshape(x.shape[0], -1)


def teacher_targets(teacher_params: Sequence[Any], batch, dspec: DistillSpec
                    ) -> Dict[str, jax.Array]:
  """The (combined) teachers' outputs on `batch`, gradient-free.

  Returns:
    {task: float[B] logits / predictions, float[B, C] multiclass logits or
    float[B, B] in-batch retrieval scores; "features": float[B, D], the first
    teacher's `hint_feature` (flattened), when hints are on}.
  """
  per_teacher, features = [], None
  for k, (model, params) in enumerate(zip(dspec.teacher_models, teacher_params)):
    outputs, aux = model.apply({"params": params}, batch, train=False)
    calibrated = {}
    for task in dspec.tasks:
      z = outputs[task.name]
      if task.kind == "binary":
        a, b = dspec.calibration[k].get(task.name, (1.0, 0.0))
        z = kd.platt_calibrate(z, a, b)
      calibrated[task.name] = z
    per_teacher.append(calibrated)
    if k == 0 and dspec.hint_feature:
      features = _flat(model_base.aux_feature(
          aux, dspec.hint_feature, f"Teacher {type(model).__name__}"))
  targets = {}
  for task in dspec.tasks:
    stacked = jnp.stack([t[task.name] for t in per_teacher])
    if len(per_teacher) == 1:
      targets[task.name] = stacked[0]
      continue
    # Probabilities exist for classification heads only; regression
    # predictions and retrieval scores take the weighted mean ("logit").
    space = (dspec.ensemble_space if task.kind in ("binary", "multiclass")
             else "logit")
    targets[task.name] = kd.ensemble_logits(
        stacked, space=space,
        weights=jnp.asarray(dspec.ensemble_weights[task.name]))
  if features is not None:
    targets[FEATURES] = features
  return jax.lax.stop_gradient(targets)


def targets_from_batch(batch, dspec: DistillSpec) -> Dict[str, jax.Array]:
  """Offline mode: the precomputed "teacher/<name>" columns of the batch."""
  out = {t.name: batch[f"teacher/{t.name}"] for t in dspec.tasks}
  if dspec.hint_feature:
    out[FEATURES] = batch[f"teacher/{FEATURES}"]
  return out


def init_hint_projector(rng, student_features: jax.Array,
                        teacher_features: jax.Array):
  """Params of the FitNets regressor r: a linear map to the teacher's width."""
  dense = nn.Dense(teacher_features.shape[-1])
  return dense.init(rng, _flat(student_features))["params"]


def _ranking_term(student, teacher, batch, task, dspec):
  """Ranking distillation of a two-tower task over the in-batch items.

  student: float[B, B] in-batch scores (train mode); teacher: float[B, I]
  scores over the catalogue (the teacher runs in eval mode), read at the
  batch's item ids. Candidates of row b: the other rows' items, except
  copies of b's own item and padding rows.

  Our adaptation: Tang & Wang's pointwise loss -log sigmoid(s) is taken on
  the student's scores centred per row (minus the mean over the row's
  candidates): a two-tower's cosine / temperature scores are shifted and
  scaled so that the sigmoid saturates (the loss was ~1e-8 on MovieLens);
  centred, the teacher's top-K are pushed above the row's average candidate.
  """
  if dspec.ranking_k == 0:
    return jnp.zeros(student.shape[:1], student.dtype)
  field = [f.name for f in dspec.sparse_fields].index(task.item_field)
  ids = batch["sparse"][:, field]
  teacher_in_batch = jnp.take(teacher, ids, axis=1)  # [B, B]
  allowed = (ids[:, None] != ids[None, :]) & (batch["weights"] > 0)[None, :]
  count = jnp.maximum(jnp.sum(allowed, axis=1, keepdims=True), 1)
  mean = jnp.sum(jnp.where(allowed, student, 0.0), axis=1, keepdims=True) / count
  return kd.ranking_distillation(student - jax.lax.stop_gradient(mean),
                                 teacher_in_batch,
                                 k=min(dspec.ranking_k, student.shape[1]),
                                 lam=dspec.ranking_lambda, mask=allowed)


def per_example_terms(outputs, aux, params, batch, targets,
                      dspec: DistillSpec) -> Dict[str, jax.Array]:
  """term -> float[B] per-example values of every distillation term."""
  values = {}
  for task in dspec.tasks:
    if task.kind == "retrieval":
      if dspec.ranking:
        values[f"kd/rank/{task.name}"] = _ranking_term(
            outputs[task.name], targets[task.name], batch, task, dspec)
      continue
    loss = kd.get_kd_loss(dspec.losses[task.name])
    values[f"kd/{task.name}"] = loss(outputs[task.name], targets[task.name],
                                     temperature=dspec.temperature)
    if f"kd/list/{task.name}" in dspec.term_weights:
      values[f"kd/list/{task.name}"] = LISTWISE[dspec.listwise](
          outputs[task.name], targets[task.name], batch["user_id"],
          temperature=dspec.temperature, weights=batch["weights"])
  if dspec.hint_feature:  # plugin.build checked the student has it
    projected = nn.Dense(targets[FEATURES].shape[-1]).apply(
        {"params": params[HINT_PARAMS]},
        _flat(model_base.aux_feature(aux, dspec.hint_feature)))
    values["kd/hint"] = kd.feature_hint(projected, targets[FEATURES])
  if dspec.crossdistil_tasks:
    a, b = dspec.crossdistil_tasks
    labels_a, labels_b = batch[f"labels/{a}"], batch[f"labels/{b}"]
    for which, name in (("a", a), ("b", b)):
      values[f"rank/{name}"] = kd.crossdistil_augmented_ranking(
          outputs[name], labels_a, labels_b, task=which,
          weights=batch["weights"])
  return values
