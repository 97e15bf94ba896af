"""Models: the fused (stacked) layers equal straightforward references."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import config_defaults
from mtkd_jax import models
from mtkd_jax.data import specs
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers

SPEC = specs.DatasetSpec(
    name="toy",
    sparse=(specs.SparseField("a", 5, 4), specs.SparseField("b", 7, 3),
            specs.SparseField("c", 3, 4)),
    dense=(specs.DenseField("x"), specs.DenseField("y")),
    multi_hot=(specs.MultiHotField("g", 6, 3, 2),),
    tasks=(specs.TaskSpec("ctr", "binary", "bce"),
           specs.TaskSpec("rating", "regression", "mse")))


def toy_batch(n=6, seed=0):
  rng = np.random.default_rng(seed)
  multi = rng.integers(-1, 6, size=(n, 3)).astype(np.int32)
  multi[0] = -1  # an example with no ids at all
  return {
      "sparse": np.stack([rng.integers(0, f.vocab_size, n) for f in SPEC.sparse],
                         axis=1).astype(np.int32),
      "dense": rng.normal(size=(n, 2)).astype(np.float32),
      "multi_hot/g": multi,
  }


def test_embedding_equals_per_field_lookup():
  batch = toy_batch()
  module = embedding.FeatureEmbedding(SPEC)
  params = module.init(jax.random.PRNGKey(0), batch)["params"]
  out = np.asarray(module.apply({"params": params}, batch))
  # Reference: look every field up in its own slice of the shared table.
  t3, t4 = np.asarray(params["sparse_table_d3"]), np.asarray(params["sparse_table_d4"])
  s = batch["sparse"]
  emb_a, emb_c = t4[s[:, 0]], t4[5 + s[:, 2]]  # width-4 group: a then c
  emb_b = t3[s[:, 1]]
  g = np.asarray(params["multi_hot_g"])
  pooled = []
  for row in batch["multi_hot/g"]:
    ids = row[row >= 0]
    pooled.append(g[ids].mean(axis=0) if len(ids) else np.zeros(2))
  expected = np.concatenate([emb_b, emb_a, emb_c, np.stack(pooled),
                             batch["dense"]], axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("width", [4, 400])
@pytest.mark.parametrize("as_list", [False, True])
def test_stacked_mlp_equals_loop_of_mlps(train, width, as_list):
  """Every form (train, and eval of narrow members: one wide first layer,
  then per-member products; eval of 3 x 400 > 1024 first-layer units: each
  member's MLP in turn; the members stacked or as a list) gives a loop of
  separate MLPs' outputs and gradients."""
  assert 3 * 4 <= layers._WIDE_EVAL_MAX < 3 * 400  # pylint: disable=protected-access
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 7))
  module = layers.StackedMLP(3, (width, 2), as_list=as_list)
  stacked = types.SimpleNamespace(  # the list's members stacked on axis 1
      init=module.init,
      apply=lambda *a, **k: (jnp.stack(module.apply(*a, **k), axis=1)
                             if as_list else module.apply(*a, **k)))
  params = stacked.init(jax.random.PRNGKey(2), x, train=False)["params"]

  def loop(p, x):
    outs = []
    for k in range(3):
      h = x
      for i in range(2):
        h = jax.nn.relu(h @ p[f"kernel_{i}"][:, k] + p[f"bias_{i}"][k])
      outs.append(h)
    return jnp.stack(outs, axis=1)

  def fused(p, x):
    return stacked.apply({"params": p}, x, train=train)

  np.testing.assert_allclose(fused(params, x), loop(params, x), rtol=1e-5,
                             atol=1e-6)
  w = jax.random.normal(jax.random.PRNGKey(4), (5, 3, 2))
  grads = [jax.grad(lambda p, x: jnp.sum(w * f(p, x)), argnums=(0, 1))(params, x)
           for f in (fused, loop)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), *grads)
  # Per-slot inputs [B, num, D] go through their own MLP.
  xs = jax.random.normal(jax.random.PRNGKey(3), (5, 3, 7))
  out = stacked.apply({"params": params}, xs, train=train)
  h = xs[:, 1]
  for i in range(2):
    h = jax.nn.relu(h @ params[f"kernel_{i}"][:, 1] + params[f"bias_{i}"][1])
  np.testing.assert_allclose(out[:, 1], h, rtol=1e-5, atol=1e-6)

  def per_slot_loop(p, xs):
    outs = []
    for k in range(3):
      h = xs[:, k]
      for i in range(2):
        h = jax.nn.relu(h @ p[f"kernel_{i}"][:, k] + p[f"bias_{i}"][k])
      outs.append(h)
    return jnp.stack(outs, axis=1)

  grads = [jax.grad(lambda p, x: jnp.sum(w * f(p, x)), argnums=(0, 1))(params, xs)
           for f in (fused, per_slot_loop)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), *grads)


@pytest.mark.parametrize("num_tasks", [1, 3, 20])
def test_mix_experts_equals_einsum(num_tasks):
  """Its value, gradients (also vmapped over one-hot task cotangents, as
  rep-grad weighting takes them) and second derivatives are the einsum's;
  T = 20 takes the einsum backward branch."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  gates = jax.nn.softmax(jax.random.normal(k1, (6, num_tasks, 5)), axis=-1)
  experts = jax.random.normal(k2, (6, 5, 4))
  w = jax.random.normal(k3, (num_tasks, 4))
  reference = lambda g, e: jnp.einsum("bte,beh->bth", g, e)
  tol = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layers.mix_experts(gates, experts),
                             reference(gates, experts), **tol)

  def per_task(mix, g, e):
    return jnp.sum(jnp.tanh(mix(g, e)) * w, axis=(0, 2))

  for argnums in (0, 1):
    def rep_grads(mix):
      _, vjp = jax.vjp(lambda *a: per_task(mix, *a), gates, experts)
      return jax.vmap(lambda c: vjp(c)[argnums])(jnp.eye(num_tasks))
    np.testing.assert_allclose(rep_grads(layers.mix_experts),
                               rep_grads(reference), **tol)

  def grad_norm(mix, g):  # GradNorm-style: d/dg of a gradient's norm
    de = jax.grad(lambda e: jnp.sum(per_task(mix, g, e)))(experts)
    return jnp.sum(de ** 2)
  np.testing.assert_allclose(
      jax.grad(lambda g: grad_norm(layers.mix_experts, g))(gates),
      jax.grad(lambda g: grad_norm(reference, g))(gates), **tol)


@pytest.mark.parametrize("indexed", [False, True])
def test_mix_expert_list_equals_einsum(indexed):
  """The list form (no stack) is the einsum on the stacked experts, with
  each task's gate spread over its selected experts when indexed; its
  gradients (also vmapped over task cotangents) are the einsum's."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
  index = [[0, 1, 4], [2, 3, 4]] if indexed else None
  gates = jax.nn.softmax(jax.random.normal(k1, (6, 2, 3 if indexed else 5)), -1)
  members = list(jax.random.normal(k2, (5, 6, 4)))  # 5 experts [6, 4]
  w = jax.random.normal(k3, (2, 4))

  def reference(g, ms):
    if indexed:  # task t's gate spread over the 5 experts, zeros elsewhere
      g = jnp.einsum("btk,tkn->btn", g, jax.nn.one_hot(jnp.array(index), 5))
    return jnp.einsum("bte,beh->bth", g, jnp.stack(ms, axis=1))

  mix = lambda g, ms: layers.mix_expert_list(g, ms, index)
  tol = dict(rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(mix(gates, members), reference(gates, members),
                             **tol)
  # by hand: task 1, example 0, when indexed: experts 2, 3 and 4
  if indexed:
    np.testing.assert_allclose(
        mix(gates, members)[0, 1],
        sum(gates[0, 1, j] * members[e][0] for j, e in enumerate(index[1])),
        **tol)

  def per_task(f, g, ms):
    return jnp.sum(jnp.tanh(f(g, ms)) * w, axis=(0, 2))
  for argnums in (0, 1):
    def rep_grads(f):
      _, vjp = jax.vjp(lambda *a: per_task(f, *a), gates, members)
      return jax.vmap(lambda c: vjp(c)[argnums])(jnp.eye(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
                 rep_grads(mix), rep_grads(reference))
  with pytest.raises(ValueError, match="weigh 3 experts, 5 given"):
    layers.mix_expert_list(gates[..., :3], members)


def _model(name, **overrides):
  cfg = config_defaults.default_config().model
  cfg.name = name
  cfg.num_experts, cfg.expert_hidden = 3, (8, 4)
  cfg.bottom_hidden, cfg.tower_hidden = (8, 4), (5,)
  for k, v in overrides.items():
    cfg[k] = v
  return models.build_model(SPEC, cfg)


def test_mmoe_matches_paper_equations():
  """y_t = h_t(sum_k softmax(W_gt x)_k f_k(x)), Ma et al. 2018 eq. 5-6."""
  model = _model("mmoe")
  batch = toy_batch()
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  outputs, aux = model.apply({"params": params}, batch)
  x = embedding.FeatureEmbedding(SPEC).apply(
      {"params": params["embedding"]}, batch)
  e = params["experts"]
  experts = [jax.nn.relu(jax.nn.relu(x @ e["kernel_0"][:, k] + e["bias_0"][k])
                         @ e["kernel_1"][:, k] + e["bias_1"][k]) for k in range(3)]
  gate_logits = x @ params["gates"]["kernel"] + params["gates"]["bias"]
  tw = params["towers"]
  for t, task in enumerate(SPEC.task_names):
    g = jax.nn.softmax(gate_logits[:, t * 3:(t + 1) * 3], axis=-1)
    mixed = sum(g[:, k:k + 1] * experts[k] for k in range(3))
    h = jax.nn.relu(mixed @ tw["kernel_0"][:, t] + tw["bias_0"][t])
    y = (h @ tw["kernel_1"][:, t] + tw["bias_1"][t])[:, 0]
    np.testing.assert_allclose(outputs[task], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux.gates[:, t], g, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux.gates.sum(-1), 1.0, rtol=1e-6)


def test_mmoe_gates_are_per_task():
  """Each task's gate has its own weights: changing one leaves the other."""
  model = _model("mmoe")
  batch = toy_batch()
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  kernel = params["gates"]["kernel"]
  params2 = jax.tree.map(lambda x: x, params)
  params2["gates"]["kernel"] = kernel.at[:, 0].add(1.0)  # task 0, expert 0
  _, aux1 = model.apply({"params": params}, batch)
  _, aux2 = model.apply({"params": params2}, batch)
  assert not np.allclose(aux1.gates[:, 0], aux2.gates[:, 0])
  np.testing.assert_allclose(aux1.gates[:, 1], aux2.gates[:, 1])


def test_shared_bottom_towers_see_the_same_representation():
  model = _model("shared_bottom")
  batch = toy_batch()
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  outputs, aux = model.apply({"params": params}, batch)
  assert set(outputs) == {"ctr", "rating"}
  assert outputs["ctr"].shape == (6,)
  np.testing.assert_allclose(aux.task_inputs[:, 0], aux.task_inputs[:, 1])
  # The ctr output does not depend on the rating tower's weights.
  params2 = jax.tree.map(lambda x: x, params)
  params2["towers"]["kernel_1"] = params["towers"]["kernel_1"].at[:, 1].add(5.0)
  out2, _ = model.apply({"params": params2}, batch)
  np.testing.assert_allclose(outputs["ctr"], out2["ctr"])
  assert not np.allclose(outputs["rating"], out2["rating"])


def test_dropout_only_in_training():
  model = _model("mmoe", dropout=0.5)
  batch = toy_batch()
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  a, _ = model.apply({"params": params}, batch, train=False)
  b, _ = model.apply({"params": params}, batch, train=False)
  c, _ = model.apply({"params": params}, batch, train=True,
                     rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_allclose(a["ctr"], b["ctr"])
  assert not np.allclose(a["ctr"], c["ctr"])


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="Unknown model 'mmeo'; valid names: .*mmoe, omoe, ple, shared_bottom"):
    _model("mmeo")


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_mmoe_factored_rep_gram_equals_representation_gradients(num_tasks):
  """Rep-grad weighting's Gram for MMoE, formed from the mixture gradients
  and the gates (models/mixture.py, MMoE's `rep_gram`: one VJP when the terms are the
  tasks, else one per term), equals the Gram of the explicit per-task
  Jacobians w.r.t. the experts' output, and so does its general path (the
  materialised gradients)."""
  from mtkd_jax.models import mixture  # pylint: disable=g-import-not-at-top
  tasks = tuple(specs.TaskSpec(f"t{k}", "binary", "bce") for k in range(num_tasks))
  spec = SPEC.__class__(**{**SPEC.__dict__, "tasks": tasks})
  cfg = config_defaults.default_config().model
  cfg.name, cfg.num_experts, cfg.expert_hidden = "mmoe", 3, (8, 4)
  cfg.tower_hidden = (5,)
  model = models.build_model(spec, cfg)
  batch = toy_batch()
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  zeros = jax.tree.map(jnp.zeros_like, model.apply(
      {"params": params}, batch, mutable=["perturbations"])[1]["perturbations"])
  assert set(zeros) == {"shared", layers.MIXTURE_SITE}
  w = jax.random.normal(jax.random.PRNGKey(5), (num_tasks, 6))

  def per_task(z):
    outputs, aux = model.apply({"params": params, "perturbations": z}, batch)
    losses = jnp.stack([jnp.sum(jnp.tanh(outputs[t.name]) * w[k])
                        for k, t in enumerate(tasks)])
    return losses, aux.mixture_gates

  jac = jax.jacrev(lambda s: per_task({**zeros, "shared": s})[0])(zeros["shared"])
  flat = np.asarray(jac, np.float64).reshape(num_tasks, -1)
  expected = flat @ flat.T
  _, vjp_fn, gates = jax.vjp(per_task, zeros, has_aux=True)
  assert np.abs(expected).max() > 1e-3  # not a vacuous comparison
  for use_gates, slot_per_term in [(True, True), (True, False), (False, False)]:
    model_aux = base.Aux(shared=None, task_inputs=None,
                         mixture_gates=gates if use_gates else None)
    got = mixture.mixture_rep_gram(lambda ct: vjp_fn(ct)[-1], zeros, model_aux,
                                   num_tasks, jnp.float32, exclusive=True,
                                   slot_per_term=slot_per_term)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
