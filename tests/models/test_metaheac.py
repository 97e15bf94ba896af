"""MetaHeac (Zhu et al., KDD 2021): hybrid experts and critics under
task-conditioned attention, against the paper's equations."""
import jax
import numpy as np

from mtkd_jax import models
from mtkd_jax.models import embedding
from mtkd_jax.models import metaheac
from tests.models import test_contract as contract

SPEC = contract.BINARY  # ctr, cvr (binary), rating (regression)


def build():
  cfg = contract.small_config("metaheac")
  cfg.num_critics, cfg.task_embed_dim = 3, 2
  model = models.build_model(SPEC, cfg)
  batch = contract.batch_for(SPEC, seed=5)
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  return model, batch, params


def _softmax(z):
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_outputs_match_the_papers_equations():
  model, batch, params = build()
  outputs, aux = model.apply({"params": params}, batch)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(embedding.FeatureEmbedding(SPEC).apply(
      {"params": params["embedding"]}, batch), np.float64)
  k1, b1 = p["experts"]["kernel_0"], p["experts"]["bias_0"]  # one layer (6,)
  experts = np.maximum(np.einsum("bd,dkh->bkh", x, k1) + b1, 0)  # [B, K, H]
  relu = lambda a: np.maximum(a, 0)
  for i, task in enumerate(SPEC.tasks):
    z = np.concatenate([np.broadcast_to(p["task_embedding"][i], (8, 2)), x], 1)
    att = lambda name: _softmax(
        relu(z @ p[f"{name}_hidden"]["kernel"] + p[f"{name}_hidden"]["bias"])
        @ p[name]["kernel"] + p[name]["bias"])
    alpha, beta = att("expert_attention"), att("critic_attention")
    h = np.einsum("bk,bkh->bh", alpha, experts)
    critics = h @ p["critics"]["kernel"] + p["critics"]["bias"]  # [B, M]
    np.testing.assert_allclose(aux.gates[:, i], alpha, rtol=1e-4, atol=1e-6)
    if task.kind == "binary":
      y = np.sum(beta / (1 + np.exp(-critics)), -1)
      np.testing.assert_allclose(outputs[task.name], np.log(y / (1 - y)),
                                 rtol=1e-4, atol=1e-5)
    else:
      np.testing.assert_allclose(outputs[task.name],
                                 np.sum(beta * critics, -1), rtol=1e-4,
                                 atol=1e-5)


def test_critic_gating_is_task_specific():
  """Moving task t's representation moves task t's prediction alone."""
  model, batch, params = build()
  out, _ = model.apply({"params": params}, batch)
  moved = dict(params)
  moved["task_embedding"] = params["task_embedding"].at[1].add(1.0)
  out2, _ = model.apply({"params": moved}, batch)
  assert not np.allclose(out["cvr"], out2["cvr"])
  np.testing.assert_array_equal(out["ctr"], out2["ctr"])
  np.testing.assert_array_equal(out["rating"], out2["rating"])


def test_mixture_of_critics_logit_is_stable():
  s = np.array([[30.0, -30.0], [0.3, -1.2]], np.float32)
  w = np.array([[0.5, 0.5], [0.2, 0.8]], np.float32)
  y = np.sum(w / (1 + np.exp(-s.astype(np.float64))), -1)
  np.testing.assert_allclose(metaheac.mixture_of_critics_logit(s, w),
                             np.log(y / (1 - y)), rtol=1e-5)
