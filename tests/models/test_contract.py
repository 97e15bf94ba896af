"""The model contract (mtkd_jax/models/base.py), checked for every model in
`models.MODELS`: construction from config knobs, output and aux types and
shapes, and that `task_specific_params` partitions the params correctly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import config_defaults
from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax.data import specs
from mtkd_jax.models import base
from tests import test_task_kinds as kinds

B = 8
BINARY = kinds.make_spec((specs.TaskSpec("ctr", "binary", "bce"),
                          specs.TaskSpec("cvr", "binary", "bce"),
                          specs.TaskSpec("rating", "regression", "mse")))
FUNNEL = kinds.make_spec((specs.TaskSpec("ctr", "binary", "bce"),
                          specs.TaskSpec("ctcvr", "binary", "bce")))
# Models that need particular tasks; every other model gets BINARY.
SPECS = {"esmm": FUNNEL, "escm2": FUNNEL,
         "aitm": FUNNEL, "two_tower_mtl": kinds.RETRIEVAL}


def small_config(name):
  cfg = config_defaults.default_config().model
  cfg.name = name
  cfg.num_experts, cfg.expert_hidden = 3, (6,)
  cfg.bottom_hidden, cfg.tower_hidden = (6,), (5,)
  cfg.num_shared_experts, cfg.num_specific_experts = 2, 1
  cfg.two_tower_hidden, cfg.retrieval_dim = (6,), 4
  return cfg


def batch_for(spec, seed=0):
  batch = kinds.toy_batch(B, seed)
  rng = np.random.default_rng(seed + 1)
  for task in spec.tasks:
    batch[f"labels/{task.name}"] = rng.integers(0, 2, B).astype(np.float32)
  if "ctcvr" in spec.task_names:  # a conversion implies a click
    batch["labels/ctcvr"] *= batch["labels/ctr"]
  return batch


def build(name):
  spec = SPECS.get(name, BINARY)
  extras = {"catalogue": kinds._catalogue().columns}
  model = models.build_model(spec, small_config(name), extras)
  batch = batch_for(spec)
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  return spec, model, batch, params


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_outputs_and_aux_follow_the_contract(name):
  spec, model, batch, params = build(name)
  outputs, aux = model.apply({"params": params}, batch, train=False)
  assert list(outputs) == list(spec.task_names)
  for task in spec.tasks:
    if task.kind == "retrieval":
      assert outputs[task.name].shape == (B, kinds.NUM_ITEMS)
    else:
      assert outputs[task.name].shape == (B,), task.name
  assert isinstance(aux, base.Aux)
  assert aux.shared.shape[0] == B
  assert aux.task_inputs.ndim == 3 and aux.task_inputs.shape[0] == B
  if aux.gates is not None:
    assert aux.gates.shape[:2] == (B, len(spec.tasks))
    # Mixture weights: >= 0, summing to 1 (DSelect-k: <= 1 while selectors
    # still weigh the codes of a non-power-of-2 expert count).
    assert (np.asarray(aux.gates) >= 0).all()
    assert (np.asarray(aux.gates.sum(-1)) <= 1 + 1e-5).all()
  if aux.mixture_gates is not None:
    assert aux.mixture_gates.shape[:2] == (B, len(spec.tasks))
  if aux.cvr_logits is not None:
    assert aux.cvr_logits.shape == (B,)
  for term, values in aux.aux_losses.items():
    assert values.shape == (B,), term
  train_out, train_aux = model.apply({"params": params}, batch, train=True,
                                     rngs={"dropout": jax.random.PRNGKey(1)})
  assert list(train_out) == list(spec.task_names)
  assert isinstance(train_aux, base.Aux)


def _per_task_grads(model, params, batch, spec):
  """{task: d <outputs[task], r_task> / d params}, r random cotangents."""
  def grads(p):
    out = {}
    for i, task in enumerate(spec.task_names):
      def f(q, task=task, i=i):
        y = model.apply({"params": q}, batch, train=False)[0][task]
        r = jax.random.normal(jax.random.PRNGKey(10 + i), y.shape)
        return jnp.sum(y * r)
      out[task] = jax.grad(f)(p)
    return out
  return jax.jit(grads)(params)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_task_specific_params_partition_the_params(name):
  """Every element of a declared subtree moves one task's output at most;
  every subtree that moves one task's output alone is declared."""
  spec, model, batch, params = build(name)
  declared = base.task_specific_params(model)
  assert declared <= set(params), sorted(declared - set(params))
  grads = _per_task_grads(model, params, batch, spec)
  for top in params:
    reached = [jax.tree.leaves(jax.tree.map(
        lambda g: np.abs(np.asarray(g)) > 0, grads[t][top]))
               for t in spec.task_names]
    if top in declared:
      for leaves in zip(*reached):
        tasks_per_element = np.sum(np.stack(leaves), axis=0)
        assert tasks_per_element.max() <= 1, (name, top)
    else:
      tasks = [t for t, leaves in zip(spec.task_names, reached)
               if any(x.any() for x in leaves)]
      assert len(tasks) != 1, (f"{name}: params {top!r} serve task "
                               f"{tasks[0]!r} alone but are not declared "
                               "task-specific")
  shared, specific = base.split_params(params, model)
  assert set(shared) | set(specific) == set(params)
  assert not set(shared) & set(specific)


def test_knobs_come_from_the_model_fields():
  cfg = small_config("mmoe")
  model = models.build_model(BINARY, cfg)
  assert (model.num_experts, model.expert_hidden) == (3, (6,))
  assert model.dropout == models.MMoE.dropout  # unset: the model's default
  assert "num_levels" in cfg and cfg.num_levels is None  # PLE's, unset
  for name, cls in models.MODELS.items():
    knobs = base.knobs(cls)
    assert "spec" not in knobs and "parent" not in knobs, name
    for field in getattr(cls, "dataset_extras", ()):
      assert field not in knobs


def test_unknown_model_key_lists_the_valid_ones():
  cfg = small_config("mmoe")
  cfg.num_expert = 4  # the config is unlocked: a typo would pass silently
  with pytest.raises(errors.ConfigError,
                     match="num_expert;.*takes: dropout, expert_hidden"):
    models.build_model(BINARY, cfg)
  cfg = small_config("mmoe")
  cfg.name = "mmo"
  with pytest.raises(errors.ConfigError, match="valid names: .*mmoe"):
    models.build_model(BINARY, cfg)


def test_other_models_knobs_are_ignored_so_sweeps_can_switch_models():
  cfg = small_config("shared_bottom")  # sets num_experts, a MoE knob
  model = models.build_model(BINARY, cfg)
  assert model.bottom_hidden == (6,)
  assert not hasattr(model, "num_experts")
