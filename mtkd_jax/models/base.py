"""The model contract: what every model in `models.MODELS` is and returns.

A model is a Flax linen Module class, registered by name in `models.MODELS`,
that follows these rules (tests/models/test_contract.py checks each one for
every registered model):

1. Construction: `Model(spec, **knobs)`. `spec` is the dataset's
   `specs.DatasetSpec`; every other dataclass field with a default is a knob,
   set from `config.model.<knob>` (unset: the field's default). A knob name
   means one thing in every model that has it (`num_experts`,
   `expert_hidden`, `bottom_hidden`, `tower_hidden`, `dropout`, ...) and has
   one type, so one config can switch `model.name` in a sweep. Fields named
   in `dataset_extras` are not knobs: `models.build_model` fills them from
   the dataset's `Splits.extras` (e.g. the two-tower item catalogue).

2. Call: `model.apply(variables, batch, train=...) -> (outputs, aux)`.
   `outputs` maps each task of `spec`, in spec order, to float[B] (a binary
   task's logit, a regression task's prediction), float[B, C] (a multiclass
   task's logits) or float[B, B] / float[B, I] (a retrieval task's in-batch
   logits / catalogue scores). `aux` is an `Aux`.

3. Task-specific parameters: `task_specific_params`, the names of the
   top-level params subtrees (submodules) in which every element serves one
   task's output only (task t's tower, or slice t of a stacked tower);
   every other subtree is shared. Gradient-level weighting methods
   (PCGrad, MGDA, ...) combine per-task gradients on shared params only;
   `split_params` applies the partition.

4. Optional hooks for representation-gradient weighting: the model passes
   its shared representation through `self.perturb("shared", h)`; a model
   whose shared experts reach every loss only through a gated mixture also
   perturbs the mixture (`layers.MIXTURE_SITE`) and returns the mixing
   weights as `Aux.mixture_gates`. A model may give an exact, cheaper Gram
   of those gradients as its `rep_gram` attribute (the signature of
   `weighting.gram.representation_gram`; MMoE's: `mixture.py`).

Adding a model: one module file (the class, following 1-4), one line in
`models.MODELS`, and its test of the paper's defining property; the
contract test picks it up from the registry.
"""
import dataclasses
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

import flax.linen as nn
import jax
from flax import struct

from mtkd_jax import errors

# Dataclass fields of a linen Module that are not knobs.
_NOT_KNOBS = ("spec", "parent", "name")


@struct.dataclass
class Aux:
  """A model's auxiliary outputs (a pytree; None fields are empty).

  Attributes:
    shared: the shared representation, float[B, H] or float[B, E, H] (the
      experts); what feature-hint distillation reads by default.
    task_inputs: float[B, T, H], what each task's tower receives.
    gates: float[B, T, E], each task's mixture weights over the experts it
      mixes (mixture-of-experts models); the evaluator logs their means.
    mixture_gates: float[B, T, E], set only when the shared experts reach
      every loss through `layers.mix_experts(mixture_gates, experts)` alone
      (rule 4 of the contract); the train step's rep-grad shortcut.
    cvr_logits: float[B], a conversion funnel's post-click CVR logit
      (ESMM-style models); the evaluator's `cvr/auc_clicked` reads it.
    aux_losses: {term name: float[B]}, per-example regularisers, already
      weighted; the train step adds each as a named loss term.
    diagnostics: {name: array}, model-specific outputs nothing generic
      reads (e.g. DSelect-k's selectors, AITM's attention weights).
  """
  shared: Any
  task_inputs: Any
  gates: Optional[jax.Array] = None
  mixture_gates: Optional[jax.Array] = None
  cvr_logits: Optional[jax.Array] = None
  aux_losses: Dict[str, jax.Array] = dataclasses.field(default_factory=dict)
  diagnostics: Dict[str, Any] = dataclasses.field(default_factory=dict)


FEATURES = ("shared", "task_inputs")  # the Aux fields a hint can read


def aux_feature(aux: Aux, name: str, who: str = "The model"):
  """`aux.<name>` for a feature-hint field; ConfigError naming the valid ones."""
  if name not in FEATURES or getattr(aux, name) is None:
    valid = [f for f in FEATURES if getattr(aux, f) is not None]
    raise errors.ConfigError(f"{who} has no aux feature {name!r}; valid: "
                             f"{', '.join(valid)}.")
  return getattr(aux, name)


def task_specific_params(model: nn.Module) -> FrozenSet[str]:
  """The model's task-specific top-level param names (contract rule 3)."""
  try:
    names = model.task_specific_params
  except AttributeError:
    raise TypeError(f"{type(model).__name__} declares no task_specific_params "
                    "(see mtkd_jax/models/base.py).") from None
  return frozenset(names)


def top_name(path) -> str:
  """The top-level name of a params path (jax key entries or str)."""
  return path[0].key if hasattr(path[0], "key") else str(path[0])


def is_task_specific(path, model: nn.Module) -> bool:
  """Whether the param at `path` serves one task only (contract rule 3)."""
  return top_name(path) in task_specific_params(model)


def split_params(params: Mapping[str, Any], model: nn.Module
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(shared, task-specific): the top-level subtrees of `params`."""
  specific = task_specific_params(model)
  return ({k: v for k, v in params.items() if k not in specific},
          {k: v for k, v in params.items() if k in specific})


def knobs(model_cls) -> Dict[str, Any]:
  """{knob: default} of a model class (contract rule 1)."""
  extras = set(getattr(model_cls, "dataset_extras", ()))
  out = {}
  for f in dataclasses.fields(model_cls):
    if f.name in _NOT_KNOBS or f.name in extras:
      continue
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out


def knob_type(default) -> type:
  """The config type of a knob default (sequences are tuples)."""
  if isinstance(default, (list, tuple)):
    return tuple
  return type(default)
