"""A model's size and cost: parameters, FLOPs per example, batch latency.

Distillation reports set teacher and student side by side with these; every
run writes them to results.json under "model".
"""
import statistics
import time
from typing import Dict

import jax
import numpy as np

from mtkd_jax.distill import plugin as distill_plugin

# Leaf names of embedding tables (models/embedding.py, models/retrieval.py).
EMBEDDING_PREFIXES = ("sparse_table", "multi_hot_", "sequence_table_",
                      "embedding")
# Not part of the served model: the params distillation adds (its projector).
TRAINING_ONLY = distill_plugin.EXTRA_PARAMS


def _key(entry) -> str:
  return str(getattr(entry, "key", entry))


def parameter_counts(params) -> Dict[str, int]:
  """{"params", "embedding_params", "non_embedding_params"} of a model.

  Embedding tables are the leaves named like EMBEDDING_PREFIXES; training-
  only subtrees (the FitNets projector) are not counted.
  """
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if _key(path[0]) in TRAINING_ONLY:
      continue
    size = int(np.prod(np.shape(leaf)))
    total += size
    if _key(path[-1]).startswith(EMBEDDING_PREFIXES):
      embedding += size
  return {"params": total, "embedding_params": embedding,
          "non_embedding_params": total - embedding}


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def describe(model, params, batch, repeats: int = 5) -> Dict[str, float]:
  """Parameter counts, XLA's FLOPs per example of the forward pass and the
  median wall time of one forward pass over `batch` on one device."""
  params = jax.device_get(params)
  batch = {k: np.asarray(v) for k, v in jax.device_get(batch).items()}
  size = len(batch["weights"])
  forward = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False)[0])
  compiled = forward.lower(params, batch).compile()
  jax.block_until_ready(compiled(params, batch))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, batch))
    times.append(time.perf_counter() - t0)
  out = dict(parameter_counts(params))
  out["flops_per_example"] = _flops(compiled) / size
  out["latency_ms_per_batch"] = 1e3 * statistics.median(times)
  out["latency_batch_size"] = size
  return out
