"""STEM (Su et al., AAAI 2024): task-specific embeddings get no gradient
from other tasks' losses, yet every expert reaches every task's forward."""
import jax
import jax.numpy as jnp
import numpy as np

from mtkd_jax import models
from tests.models import test_contract as contract


def build():
  cfg = contract.small_config("stem")
  model = models.build_model(contract.BINARY, cfg)
  batch = contract.batch_for(contract.BINARY, seed=2)
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  return model, batch, params


def _zero(tree):
  return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def test_task_specific_embeddings_get_no_gradient_from_other_tasks():
  model, batch, params = build()
  tasks = contract.BINARY.task_names
  for t in tasks:
    # The task's mean BCE / MSE loss (the step's per-task term).
    def loss(p, t=t):
      y = model.apply({"params": p}, batch)[0][t]
      label = batch[f"labels/{t}"]
      if t == "rating":
        return jnp.mean((y - label)**2)
      return jnp.mean(jnp.logaddexp(0.0, y) - label * y)
    g = jax.jit(jax.grad(loss))(params)
    assert not _zero(g["embedding"]) and not _zero(g["shared_experts"])
    for s in tasks:
      if s == t:
        assert not _zero(g[f"embedding_{s}"]) and not _zero(g[f"experts_{s}"])
      else:
        assert _zero(g[f"embedding_{s}"]), (t, s)
        assert _zero(g[f"experts_{s}"]), (t, s)


def test_all_forward_every_expert_reaches_every_task():
  """Task t's output moves when task s's embedding moves (s != t)."""
  model, batch, params = build()
  out, aux = model.apply({"params": params}, batch)
  n = 3 * 1 + 2  # T m_k + m_s
  assert aux.gates.shape == (8, 3, n)
  np.testing.assert_allclose(aux.gates.sum(-1), 1.0, rtol=1e-5)
  moved = jax.tree.map(lambda x: x, params)
  moved["embedding_cvr"] = jax.tree.map(lambda x: x + 0.5,
                                        params["embedding_cvr"])
  out2, _ = model.apply({"params": moved}, batch)
  assert not np.allclose(out["ctr"], out2["ctr"])


def test_mixture_matches_the_gate_equation():
  model, batch, params = build()
  _, aux = model.apply({"params": params}, batch)
  # Gate of task t: softmax over its slice of W (x_t + x_s).
  from mtkd_jax.models import embedding  # pylint: disable=g-import-not-at-top
  spec = contract.BINARY
  emb = lambda name: embedding.FeatureEmbedding(spec).apply(
      {"params": params[name]}, batch)
  x_s = emb("embedding")
  w, b = params["gates"]["kernel"], params["gates"]["bias"]
  for i, t in enumerate(spec.task_names):
    z = ((emb(f"embedding_{t}") + x_s) @ w + b).reshape(8, 3, -1)[:, i]
    np.testing.assert_allclose(aux.gates[:, i], jax.nn.softmax(z, -1),
                               rtol=1e-5, atol=1e-6)
