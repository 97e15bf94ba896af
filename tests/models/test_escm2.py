"""ESCM2 (Wang et al., SIGIR 2022): the IPS and DR counterfactual CVR risks
against hand computations, and where their gradients go."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import errors
from mtkd_jax.models import escm2
from tests.models import test_contract as contract


def build(counterfactual, **knobs):
  cfg = contract.small_config("escm2")
  cfg.counterfactual = counterfactual
  for k, v in knobs.items():
    cfg[k] = v
  from mtkd_jax import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(contract.FUNNEL, cfg)
  batch = contract.batch_for(contract.FUNNEL, seed=4)
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  return model, batch, params


def _bce(logit, label):
  p = 1.0 / (1.0 + np.exp(-logit))
  return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def test_ips_is_clicked_cvr_loss_over_the_ctr_propensity():
  model, batch, params = build("ips", counterfactual_weight=0.5,
                               min_propensity=0.3)
  outputs, aux = model.apply({"params": params}, batch)
  assert set(aux.aux_losses) == {"escm2/ips"}
  ctr = np.asarray(outputs["ctr"], np.float64)
  cvr = np.asarray(aux.cvr_logits, np.float64)
  o, r = batch["labels/ctr"], batch["labels/ctcvr"]
  propensity = np.maximum(1 / (1 + np.exp(-ctr)), 0.3)
  expected = 0.5 * o * _bce(cvr, r) / propensity
  np.testing.assert_allclose(aux.aux_losses["escm2/ips"], expected, rtol=1e-5)
  assert (expected[o == 0] == 0).all() and (expected[o == 1] > 0).all()
  # The risk's mean over all impressions: sum over clicked / |D|.
  np.testing.assert_allclose(
      np.mean(aux.aux_losses["escm2/ips"]),
      0.5 * sum(_bce(cvr[i], r[i]) / propensity[i] for i in range(len(o))
                if o[i]) / len(o), rtol=1e-5)


def _member(leaf, k):
  """StackedMLP member k: kernels [fan_in, num, width], biases [num, width]."""
  return leaf[:, k] if leaf.ndim == 3 else leaf[k]


def _term_grads(model, params, batch, term):
  return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, batch)[1]
                                    .aux_losses[term]))(params)


def test_ips_propensity_is_fixed():
  """The IPS term trains the CVR tower (slot 1), not the CTR tower."""
  model, batch, params = build("ips")
  g = _term_grads(model, params, batch, "escm2/ips")["towers"]
  assert all(not np.any(_member(x, 0)) for x in jax.tree.leaves(g))
  assert any(np.any(_member(x, 1)) for x in jax.tree.leaves(g))


def test_dr_error_and_imputation_terms():
  model, batch, params = build("dr", counterfactual_weight=1.0,
                               min_propensity=0.1)
  outputs, aux = model.apply({"params": params}, batch)
  assert set(aux.aux_losses) == {"escm2/dr", "escm2/imputation"}
  ctr = np.asarray(outputs["ctr"], np.float64)
  e = _bce(np.asarray(aux.cvr_logits, np.float64), batch["labels/ctcvr"])
  e_hat = np.asarray(aux.diagnostics["imputed_error"], np.float64)
  o = batch["labels/ctr"]
  q = np.maximum(1 / (1 + np.exp(-ctr)), 0.1)
  np.testing.assert_allclose(aux.aux_losses["escm2/dr"],
                             e_hat + o * (e - e_hat) / q, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(aux.aux_losses["escm2/imputation"],
                             o * (e - e_hat)**2 / q, rtol=1e-4, atol=1e-6)
  # The imputation tower learns from the imputation risk only, the CVR
  # tower from the DR error term only.
  dr = _term_grads(model, params, batch, "escm2/dr")
  imp = _term_grads(model, params, batch, "escm2/imputation")
  assert all(not np.any(x) for x in jax.tree.leaves(dr["imputation"]))
  assert any(np.any(x) for x in jax.tree.leaves(imp["imputation"]))
  assert all(not np.any(x) for x in jax.tree.leaves(imp["towers"]))


def test_dr_with_zero_imputation_is_ips():
  model, batch, params = build("dr")
  last = max(k for k in params["imputation"] if k.startswith("kernel"))
  bias = last.replace("kernel", "bias")
  params["imputation"][last] = jnp.zeros_like(params["imputation"][last])
  params["imputation"][bias] = jnp.zeros_like(params["imputation"][bias])
  _, aux = model.apply({"params": params}, batch)
  ips_model, _, _ = build("ips")
  _, ips_aux = ips_model.apply(
      {"params": {k: v for k, v in params.items() if k != "imputation"}}, batch)
  np.testing.assert_allclose(aux.aux_losses["escm2/dr"],
                             ips_aux.aux_losses["escm2/ips"], rtol=1e-6)


def test_no_labels_no_counterfactual_terms_and_bad_kind():
  model, batch, params = build("dr")
  serving = {k: v for k, v in batch.items() if not k.startswith("labels/")}
  outputs, aux = model.apply({"params": params}, serving)
  assert aux.aux_losses == {} and set(outputs) == {"ctr", "ctcvr"}
  with pytest.raises(errors.ConfigError, match="valid: ips, dr"):
    build("snips")
  assert escm2.COUNTERFACTUALS == ("ips", "dr")
