"""OMoE, PLE, DSelect-k, ESMM, AITM, cross-stitch, single-task: each model's
defining property, checked against its paper's equations."""
import decimal
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import config_defaults
from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax.data import specs
from mtkd_jax.models import conversion
from mtkd_jax.models import embedding
from mtkd_jax.models import gated
from mtkd_jax.models import multicolumn
from mtkd_jax.train import step as step_lib


def make_spec(tasks=("ctr", "cvr")):
  return specs.DatasetSpec(
      name="toy",
      sparse=(specs.SparseField("a", 5, 4), specs.SparseField("b", 7, 3)),
      dense=(specs.DenseField("x"), specs.DenseField("y")),
      multi_hot=(specs.MultiHotField("g", 6, 3, 2),),
      tasks=tuple(specs.TaskSpec(t, "binary", "bce") for t in tasks))


SPEC = make_spec()
FUNNEL = make_spec(("ctr", "ctcvr"))


def toy_batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "sparse": np.stack([rng.integers(0, 5, n), rng.integers(0, 7, n)],
                         axis=1).astype(np.int32),
      "dense": rng.normal(size=(n, 2)).astype(np.float32),
      "multi_hot/g": rng.integers(-1, 6, size=(n, 3)).astype(np.int32),
  }


def build(name, spec=SPEC, **overrides):
  cfg = config_defaults.default_config().model
  cfg.name = name
  cfg.num_experts, cfg.expert_hidden = 4, (8, 6)
  cfg.bottom_hidden, cfg.tower_hidden = (8, 6), (5,)
  cfg.num_shared_experts, cfg.num_specific_experts = 2, 2
  for k, v in overrides.items():
    cfg[k] = v
  return models.build_model(spec, cfg)


# Eager on purpose: for these many tiny models, compiling a whole program per
# call costs more CPU than running them op by op.
def init(model, batch, seed=0):
  return model.init(jax.random.PRNGKey(seed), batch)["params"]


def apply(model, params, batch):
  return model.apply({"params": params}, batch)


def task_grads(model, params, batch):
  """{task: d sum_i y_task(i) / d params} for every task (one compiled call:
  cheaper than differentiating op by op)."""
  def grads(p):
    return {t: jax.grad(lambda q, t=t: apply(model, q, batch)[0][t].sum())(p)
            for t in model.spec.task_names}
  return jax.jit(grads)(params)


def embed(spec, params, batch):
  return embedding.FeatureEmbedding(spec).apply({"params": params}, batch)


def stacked_mlp(p, x, k, n_layers, final_activation=True):
  """Reference: slot k of a StackedMLP with params p, on x [B, D]."""
  for i in range(n_layers):
    x = x @ p[f"kernel_{i}"][:, k] + p[f"bias_{i}"][k]
    if i < n_layers - 1 or final_activation:
      x = jax.nn.relu(x)
  return x


def is_zero(tree):
  return all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(tree))


def nonzero(x):
  return float(np.abs(np.asarray(x)).sum()) > 0


# --------------------------------------------------------------------------
# OMoE.
# --------------------------------------------------------------------------


def test_omoe_one_gate_shared_by_all_tasks():
  """g(x) = softmax(W x) for every task; MMoE's per-task gates differ."""
  batch = toy_batch()
  model = build("omoe")
  params = init(model, batch)
  outputs, aux = apply(model, params, batch)
  x = embed(SPEC, params["embedding"], batch)
  g = jax.nn.softmax(x @ params["gate"]["kernel"] + params["gate"]["bias"])
  experts = jnp.stack([stacked_mlp(params["experts"], x, k, 2)
                       for k in range(4)], axis=1)
  mixed = jnp.einsum("be,beh->bh", g, experts)
  for t, task in enumerate(SPEC.task_names):
    np.testing.assert_allclose(aux.gates[:, t], g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        outputs[task], stacked_mlp(params["towers"], mixed, t, 2, False)[:, 0],
        rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(aux.gates[:, 0], aux.gates[:, 1])
  np.testing.assert_array_equal(aux.task_inputs[:, 0], aux.task_inputs[:, 1])
  mmoe = build("mmoe")
  _, mmoe_aux = apply(mmoe, init(mmoe, batch), batch)
  assert not np.allclose(mmoe_aux.gates[:, 0], mmoe_aux.gates[:, 1])


# --------------------------------------------------------------------------
# PLE.
# --------------------------------------------------------------------------


def test_ple_expert_index_orders_own_specific_then_shared():
  np.testing.assert_array_equal(gated.ple_expert_index(2, 2, 3),
                                [[0, 1, 4, 5, 6], [2, 3, 4, 5, 6]])


def test_cgc_matches_paper_equations():
  """y_k = t^k(softmax(W^k x) [E_k(x); E_s(x)]), Tang et al. 2020 eq. 1-4."""
  batch = toy_batch()
  model = build("ple", num_levels=1, num_specific_experts=1,
                num_shared_experts=2)
  params = init(model, batch)
  outputs, aux = apply(model, params, batch)
  lvl = params["level_1"]
  assert "shared_gate" not in lvl  # one level: no shared gate
  x = embed(SPEC, params["embedding"], batch)
  experts = [stacked_mlp(lvl["experts"], x, k, 2) for k in range(4)]
  for t, task in enumerate(SPEC.task_names):
    g = jax.nn.softmax(stacked_mlp(lvl["task_gates"], x, t, 1, False))
    own = [experts[t], experts[2], experts[3]]  # specific_t, shared_0, shared_1
    mixed = sum(g[:, e:e + 1] * own[e] for e in range(3))
    y = stacked_mlp(params["towers"], mixed, t, 2, False)[:, 0]
    np.testing.assert_allclose(outputs[task], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux.gates[:, t], g, rtol=1e-5, atol=1e-7)


def test_cgc_with_shared_experts_only_is_mmoe():
  """0 specific experts: CGC is MMoE over the shared experts (same params)."""
  batch = toy_batch()
  mmoe = build("mmoe", num_experts=3)
  ple = build("ple", num_specific_experts=0, num_shared_experts=3)
  mp = init(mmoe, batch)
  d = mp["gates"]["kernel"].shape[0]
  pp = {"embedding": mp["embedding"], "towers": mp["towers"],
        "level_1": {"experts": mp["experts"], "task_gates": {
            "kernel_0": mp["gates"]["kernel"].reshape(d, 2, 3),
            "bias_0": mp["gates"]["bias"].reshape(2, 3)}}}
  assert jax.tree.structure(pp) == jax.tree.structure(init(ple, batch))
  (mo, ma), (po, pa) = apply(mmoe, mp, batch), apply(ple, pp, batch)
  for task in SPEC.task_names:
    np.testing.assert_allclose(po[task], mo[task], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pa.gates, ma.gates, rtol=1e-5, atol=1e-7)


def member(leaf, index):
  """Members `index` of a StackedMLP leaf: kernels [fan_in, num, width]
  stack them on axis 1, biases [num, width] on axis 0."""
  return leaf[:, index] if leaf.ndim == 3 else leaf[index]


def test_ple_specific_experts_get_no_gradient_from_other_tasks():
  """The defining property: task A's experts are out of task B's paths."""
  batch = toy_batch()
  model = build("ple", num_specific_experts=2, num_shared_experts=2)
  params = init(model, batch)
  # Fused order: ctr-specific 0-1, cvr-specific 2-3, shared 4-5.
  spec_of = {"ctr": slice(0, 2), "cvr": slice(2, 4)}
  shared = slice(4, 6)
  grads = task_grads(model, params, batch)
  for task, other in (("ctr", "cvr"), ("cvr", "ctr")):
    g = grads[other]["level_1"]["experts"]
    for name, leaf in g.items():
      assert np.all(np.asarray(member(leaf, spec_of[task])) == 0), (task, other, name)
      assert (nonzero(member(leaf, spec_of[other])) and
              nonzero(member(leaf, shared))), name
    assert is_zero(jax.tree.map(
        lambda x, t=task: member(x, SPEC.task_names.index(t)),
        grads[other]["towers"]))


def test_ple_two_levels_progressive_sharing():
  """Shared gate below the last level only; level-1 specific experts reach
  every task through it, the last level's stay private."""
  batch = toy_batch()
  model = build("ple", num_levels=2, num_specific_experts=1,
                num_shared_experts=2)
  params = init(model, batch)
  assert "shared_gate" in params["level_1"]
  assert "shared_gate" not in params["level_2"]
  assert params["level_1"]["shared_gate"]["kernel"].shape[-1] == 4  # all experts
  outputs, aux = apply(model, params, batch)
  assert aux.gates.shape == (8, 2, 3)
  np.testing.assert_allclose(aux.gates.sum(-1), 1.0, rtol=1e-6)
  assert all(np.isfinite(v).all() for v in outputs.values())
  g = task_grads(model, params, batch)["cvr"]
  assert is_zero(jax.tree.map(lambda x: member(x, 0), g["level_2"]["experts"]))  # ctr's
  assert nonzero(g["level_1"]["experts"]["kernel_0"][:, 0])  # via shared gate


# --------------------------------------------------------------------------
# DSelect-k.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_smooth_step_is_the_papers_cubic(gamma):
  t = np.linspace(-gamma, gamma, 101).astype(np.float32)
  expected = np.where(t <= -gamma / 2, 0.0, np.where(
      t >= gamma / 2, 1.0, -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5))
  np.testing.assert_allclose(gated.smooth_step(t, gamma), expected, atol=1e-6)
  assert float(gated.smooth_step(0.0, gamma)) == 0.5
  # C^1: value and slope meet the constant pieces at +-gamma/2.
  slope = jax.vmap(jax.grad(lambda s: gated.smooth_step(s, gamma)))
  edge = np.float32(gamma / 2 * (1 - 1e-4))
  np.testing.assert_allclose(slope(jnp.array([-edge, edge])), 0.0, atol=1e-3)
  np.testing.assert_allclose(gated.smooth_step(jnp.array([-edge, edge]), gamma),
                             [0.0, 1.0], atol=1e-6)


def test_dselect_selectors_sum_to_one():
  batch = toy_batch()
  model = build("dselect_k", num_experts=4, num_selectors=2)
  params = init(model, batch)
  # Move the selectors off their near-uniform start.
  params["selector_logits"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(3), params["selector_logits"]["kernel"].shape)
  outputs, aux = apply(model, params, batch)
  assert aux.diagnostics["selectors"].shape == (8, 2, 2, 4)
  np.testing.assert_allclose(aux.diagnostics["selectors"].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(aux.gates.sum(-1), 1.0, rtol=1e-6)
  assert (np.asarray(aux.diagnostics["selectors"]) >= 0).all()
  assert aux.aux_losses == {}  # 4 experts, no entropy term
  # y_t = h_t(sum_e q_e f_e(x)).
  x = embed(SPEC, params["embedding"], batch)
  experts = jnp.stack([stacked_mlp(params["experts"], x, k, 2)
                       for k in range(4)], axis=1)
  mixed = jnp.einsum("be,beh->bh", aux.gates[:, 1], experts)
  np.testing.assert_allclose(
      outputs["cvr"], stacked_mlp(params["towers"], mixed, 1, 2, False)[:, 0],
      rtol=1e-5, atol=1e-6)


def test_dselect_saturated_gate_is_exactly_k_sparse():
  """|z| >= gamma/2 everywhere: each selector is one-hot on the expert its
  binary code names, and at most k experts have nonzero weight."""
  batch = toy_batch()
  model = build("dselect_k", num_experts=4, num_selectors=2, gamma=1.0,
                entropy_reg=0.1)
  params = init(model, batch)
  chosen = [[3, 1], [2, 2]]  # task -> its two selectors' experts
  bits = np.array([[[(e >> (1 - j)) & 1 for j in range(2)] for e in row]
                   for row in chosen])  # [T, k, m], MSB first
  z = np.where(bits, 3.0, -3.0).reshape(-1).astype(np.float32)
  params["selector_logits"]["kernel"] = jnp.zeros_like(
      params["selector_logits"]["kernel"])
  params["selector_logits"]["bias"] = jnp.asarray(z)
  _, aux = apply(model, params, batch)
  sel = np.asarray(aux.diagnostics["selectors"])
  for t, row in enumerate(chosen):
    for i, e in enumerate(row):
      np.testing.assert_array_equal(sel[:, t, i], np.eye(4)[e][None].repeat(8, 0))
  gates = np.asarray(aux.gates)
  assert ((gates > 0).sum(-1) <= 2).all()
  assert set(np.nonzero(gates[0, 0])[0]) == {1, 3}
  np.testing.assert_array_equal(np.nonzero(gates[0, 1])[0], [2])
  np.testing.assert_allclose(gates[:, 1, 2], 1.0, rtol=1e-6)
  w = params["selector_weights"]
  x = embed(SPEC, params["embedding"], batch)
  sw = jax.nn.softmax((x @ w["kernel"] + w["bias"]).reshape(-1, 2, 2), axis=-1)
  np.testing.assert_allclose(gates[:, 0, 3], sw[:, 0, 0], rtol=1e-5)
  # Binary selectors have zero entropy (up to the 1e-6 inside the log).
  np.testing.assert_allclose(aux.aux_losses["dselect_k/entropy"], 0.0, atol=1e-5)


def test_dselect_non_power_of_two_adds_reachability_term():
  batch = toy_batch()
  model = build("dselect_k", num_experts=3, num_selectors=2)
  params = init(model, batch)
  _, aux = apply(model, params, batch)
  # Near-uniform start over 4 codes: each selector gives 3/4 to real experts.
  np.testing.assert_allclose(aux.aux_losses["dselect_k/reachability"],
                             2 * 2 / 0.75, rtol=0.05)
  params["selector_logits"]["kernel"] = jnp.zeros_like(
      params["selector_logits"]["kernel"])
  params["selector_logits"]["bias"] = jnp.full((8,), -3.0)  # all pick expert 0
  _, aux = apply(model, params, batch)
  np.testing.assert_allclose(aux.aux_losses["dselect_k/reachability"], 4.0)
  assert step_lib.term_names(model, params, batch, SPEC.tasks) == (
      "ctr", "cvr", "dselect_k/reachability")


# --------------------------------------------------------------------------
# ESMM.
# --------------------------------------------------------------------------


def _exact_ctcvr_logit(a, b):
  """logit(sigmoid(a) sigmoid(b)) in 50-digit decimal arithmetic."""
  with decimal.localcontext() as ctx:
    ctx.prec = 50
    sig = lambda v: 1 / (1 + (-decimal.Decimal(float(v))).exp())
    p = sig(a) * sig(b)
    return float(p.ln() - (1 - p).ln())


def test_ctcvr_logit_is_the_product_in_log_space():
  a, b = np.meshgrid(np.array([-30, -8, -1, 0, 0.5, 8, 30], np.float32),
                     np.array([-30, -8, -1, 0, 0.5, 8, 30], np.float32))
  logit = np.asarray(conversion.ctcvr_logit(jnp.asarray(a), jnp.asarray(b)))
  p = (1 / (1 + np.exp(-a.astype(np.float64)))) * (1 / (1 + np.exp(-b.astype(np.float64))))
  np.testing.assert_allclose(jax.nn.sigmoid(logit), p, rtol=1e-5)
  np.testing.assert_allclose(logit, np.vectorize(_exact_ctcvr_logit)(a, b),
                             rtol=1e-6, atol=1e-6)
  # Finite, with finite gradients, far past float32's sigmoid saturation.
  big = jnp.array([-1000.0, -100.0, 100.0, 1000.0])
  aa, bb = jnp.meshgrid(big, big)
  assert np.isfinite(conversion.ctcvr_logit(aa, bb)).all()
  grads = jax.grad(lambda u, v: conversion.ctcvr_logit(u, v).sum(),
                   argnums=(0, 1))(aa, bb)
  assert all(np.isfinite(g).all() for g in grads)
  np.testing.assert_allclose(conversion.ctcvr_logit(100.0, 100.0),
                             100 - np.log(2), rtol=1e-6)


@pytest.mark.parametrize("ctr,cvr", [(30.0, -30.0), (30.0, 30.0),
                                     (-30.0, -30.0), (1.5, -0.5)])
def test_esmm_pctcvr_is_pctr_times_pcvr(ctr, cvr):
  batch = toy_batch()
  model = build("esmm", spec=FUNNEL)
  params = init(model, batch)
  towers = params["towers"]
  last = max(int(k.split("_")[1]) for k in towers if k.startswith("kernel"))
  towers[f"kernel_{last}"] = jnp.zeros_like(towers[f"kernel_{last}"])
  towers[f"bias_{last}"] = jnp.array([[ctr], [cvr]])
  outputs, aux = apply(model, params, batch)
  np.testing.assert_allclose(outputs["ctr"], ctr)
  np.testing.assert_allclose(aux.cvr_logits, cvr)
  assert np.isfinite(outputs["ctcvr"]).all()
  expected = jax.nn.sigmoid(np.float64(ctr)) * jax.nn.sigmoid(np.float64(cvr))
  np.testing.assert_allclose(jax.nn.sigmoid(outputs["ctcvr"]), expected, rtol=1e-5)


def test_esmm_towers_share_one_embedding():
  batch = toy_batch()
  model = build("esmm", spec=FUNNEL)
  params = init(model, batch)
  assert set(params) == {"embedding", "towers"}
  assert params["towers"]["kernel_0"].shape[1] == 2  # ctr and cvr towers
  grads = task_grads(model, params, batch)
  g_ctr, g_ctcvr = grads["ctr"], grads["ctcvr"]
  assert nonzero(g_ctr["embedding"]["sparse_table_d4"])
  assert nonzero(g_ctcvr["embedding"]["sparse_table_d4"])
  # pCTR ignores the CVR tower; pCTCVR uses both towers.
  assert is_zero(jax.tree.map(lambda x: member(x, 1), g_ctr["towers"]))
  assert nonzero(g_ctcvr["towers"]["kernel_0"][:, 0])
  assert nonzero(g_ctcvr["towers"]["kernel_0"][:, 1])


def test_esmm_needs_the_configured_funnel_tasks():
  with pytest.raises(errors.ConfigError, match="funnel_tasks"):
    model = build("esmm", spec=SPEC)
    init(model, toy_batch())
  with pytest.raises(errors.ConfigError, match="dataset's order"):
    model = build("esmm", spec=FUNNEL, funnel_tasks=("ctcvr", "ctr"))
    init(model, toy_batch())


# --------------------------------------------------------------------------
# AITM.
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _aitm_params(tasks):
  return init(build("aitm", spec=make_spec(tasks)), toy_batch())


def _aitm_with_logits(spec, logits, weight=0.6):
  """AITM whose output heads give these logits for every example."""
  batch = toy_batch()
  model = build("aitm", spec=spec, calibration_weight=weight)
  params = jax.tree.map(lambda x: x, _aitm_params(spec.task_names))  # a copy
  params["heads"]["kernel_0"] = jnp.zeros_like(params["heads"]["kernel_0"])
  params["heads"]["bias_0"] = jnp.asarray(logits, jnp.float32)[:, None]
  return apply(model, params, batch)


def test_aitm_calibrator_penalises_only_increasing_probabilities():
  """L_lc = alpha sum_{t>=2} max(y_t - y_{t-1}, 0) (Xi et al. 2021, eq. 6)."""
  sig = lambda v: 1 / (1 + np.exp(-v))
  _, aux = _aitm_with_logits(FUNNEL, [1.0, -1.0])  # p_2 < p_1
  np.testing.assert_array_equal(aux.aux_losses["aitm/calibration"], 0.0)
  _, aux = _aitm_with_logits(FUNNEL, [0.5, 0.5])  # p_2 = p_1
  np.testing.assert_array_equal(aux.aux_losses["aitm/calibration"], 0.0)
  _, aux = _aitm_with_logits(FUNNEL, [-1.0, 2.0])  # p_2 > p_1
  np.testing.assert_allclose(aux.aux_losses["aitm/calibration"],
                             0.6 * (sig(2.0) - sig(-1.0)), rtol=1e-5)
  three = make_spec(("click", "cart", "buy"))
  _, aux = _aitm_with_logits(three, [0.0, 1.0, -2.0], weight=2.0)
  np.testing.assert_allclose(aux.aux_losses["aitm/calibration"],
                             2.0 * (sig(1.0) - sig(0.0)), rtol=1e-5)
  _, aux = _aitm_with_logits(three, [0.0, 1.0, 3.0], weight=1.0)
  np.testing.assert_allclose(aux.aux_losses["aitm/calibration"],
                             sig(3.0) - sig(0.0), rtol=1e-5)


def test_aitm_matches_paper_equations():
  """z_2 = sum_u w_u h3(u) over u in {p_1 = g(q_1), q_2}, w = softmax of
  <h1(u), h2(u)> / sqrt(k); y_t = Dense(z_t), z_1 = q_1."""
  batch = toy_batch()
  model = build("aitm", spec=FUNNEL)
  params = init(model, batch)
  outputs, aux = apply(model, params, batch)
  x = embed(FUNNEL, params["embedding"], batch)
  q = [stacked_mlp(params["towers"], x, t, 3) for t in range(2)]  # 8, 6, 5
  tr = params["transfer_1"]
  p1 = jax.nn.relu(q[0] @ tr["kernel"] + tr["bias"])
  att = params["attention_2"]
  cand = jnp.stack([p1, q[1]], axis=1)
  h1, h2, h3 = (cand @ att[h]["kernel"] for h in ("h1", "h2", "h3"))
  w = jax.nn.softmax((h1 * h2).sum(-1) / np.sqrt(5), axis=-1)
  z2 = (w[..., None] * h3).sum(1)
  hd = params["heads"]
  np.testing.assert_allclose(outputs["ctr"], (q[0] @ hd["kernel_0"][:, 0] + hd["bias_0"][0])[:, 0],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outputs["ctcvr"], (z2 @ hd["kernel_0"][:, 1] + hd["bias_0"][1])[:, 0],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux.diagnostics["attention"][:, 0], w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux.diagnostics["attention"].sum(-1), 1.0, rtol=1e-6)


def test_aitm_earlier_tasks_ignore_later_tasks_parameters():
  batch = toy_batch()
  model = build("aitm", spec=make_spec(("click", "cart", "buy")))
  params = init(model, batch)
  grads = task_grads(model, params, batch)
  g = grads["click"]
  for name in ("transfer_1", "transfer_2", "attention_2", "attention_3"):
    assert is_zero(g[name]), name
  assert is_zero(jax.tree.map(lambda x: member(x, slice(1, None)), g["towers"]))
  assert is_zero(jax.tree.map(lambda x: member(x, slice(1, None)), g["heads"]))
  g = grads["cart"]
  assert is_zero(g["transfer_2"]) and is_zero(g["attention_3"])
  assert nonzero(g["towers"]["kernel_0"][:, 0])  # information from the click tower
  assert nonzero(g["transfer_1"]["kernel"])


# --------------------------------------------------------------------------
# Cross-stitch.
# --------------------------------------------------------------------------


def test_cross_stitch_at_identity_is_independent_networks():
  batch = toy_batch()
  model = build("cross_stitch", alpha_init="identity")
  params = init(model, batch)
  np.testing.assert_array_equal(params["cross_stitch_0"], np.eye(2))
  outputs, _ = apply(model, params, batch)
  x = embed(SPEC, params["embedding"], batch)
  for t, task in enumerate(SPEC.task_names):
    h = x
    for l in range(2):
      h = stacked_mlp(params[f"column_{l}"], h, t, 1)
    y = stacked_mlp(params["towers"], h, t, 2, False)[:, 0]
    np.testing.assert_allclose(outputs[task], y, rtol=1e-5, atol=1e-6)
  g = task_grads(model, params, batch)["cvr"]
  for l in range(2):  # ctr's column gets nothing from cvr ...
    assert is_zero(jax.tree.map(lambda v: member(v, 0), g[f"column_{l}"]))
  # ... but alpha can learn to share: d y_cvr / d alpha_{cvr, ctr} != 0.
  assert nonzero(g["cross_stitch_1"][1, 0])


def test_cross_stitch_balanced_units_mix_the_columns():
  """x~_t = sum_s alpha_ts x_s after every column layer (Misra et al. eq. 1)."""
  batch = toy_batch()
  model = build("cross_stitch", alpha_init="balanced")
  params = init(model, batch)
  np.testing.assert_allclose(params["cross_stitch_0"], [[0.9, 0.1], [0.1, 0.9]])
  params["cross_stitch_1"] = jnp.array([[0.7, 0.3], [-0.2, 1.1]])
  outputs, _ = apply(model, params, batch)
  h = embed(SPEC, params["embedding"], batch)
  h = [h, h]
  for l in range(2):
    a = params[f"cross_stitch_{l}"]
    cols = [stacked_mlp(params[f"column_{l}"], h[t], t, 1) for t in range(2)]
    h = [a[t, 0] * cols[0] + a[t, 1] * cols[1] for t in range(2)]
  for t, task in enumerate(SPEC.task_names):
    y = stacked_mlp(params["towers"], h[t], t, 2, False)[:, 0]
    np.testing.assert_allclose(outputs[task], y, rtol=1e-5, atol=1e-6)
  g = task_grads(model, params, batch)["cvr"]
  assert nonzero(g["column_0"]["kernel_0"][:, 0])  # cvr's loss reaches ctr's column
  assert multicolumn.cross_stitch_init("balanced", 3)[0].tolist() == pytest.approx(
      [0.9, 0.05, 0.05])
  with pytest.raises(errors.ConfigError, match="identity, balanced"):
    multicolumn.cross_stitch_init("ones", 2)


# --------------------------------------------------------------------------
# Single-task.
# --------------------------------------------------------------------------


def test_single_task_models_share_nothing():
  batch = toy_batch()
  model = build("single_task")
  params = init(model, batch)
  assert set(params) == {"task_ctr", "task_cvr"}
  assert set(model.task_specific_params) == set(params)
  assert "embedding" in params["task_ctr"] and "embedding" in params["task_cvr"]
  grads = task_grads(model, params, batch)
  for task, other in (("ctr", "cvr"), ("cvr", "ctr")):
    g = grads[task]
    assert is_zero(g[f"task_{other}"])
    assert nonzero(g[f"task_{task}"]["embedding"]["sparse_table_d4"])


# --------------------------------------------------------------------------
# All new models.
# --------------------------------------------------------------------------

def test_ple_gates_reach_the_eval_step():
  """aux.gates float[B, T, m_k + m_s] is what the evaluator logs."""
  batch = toy_batch()
  model = build("ple", num_specific_experts=1, num_shared_experts=2)
  params = init(model, batch)
  gates = np.asarray(step_lib.eval_step(params, batch, model=model)["gates"])
  assert gates.shape == (8, 2, 3) and (gates >= 0).all()
  np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-5)
