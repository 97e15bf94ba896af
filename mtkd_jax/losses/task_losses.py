"""Per-example task losses, the shared weighted reduction, the multi-task total.

Every loss takes `(outputs, labels)` (outputs float[B], or float[B, C] for
multiclass logits, float[B, B] for in-batch retrieval scores; labels
float[B]) and returns float32[B]; it
has no hidden state and reads no config. Reduction is separate: padded rows
carry weight 0, so a batch mean is `sum(w * l) / sum(w)`, never `mean(l)`.
"""
from typing import Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from mtkd_jax import registry

Array = jax.Array


def binary_cross_entropy(logits: Array, labels: Array) -> Array:
  """Binary cross-entropy from logits, numerically stable.

  l = -y log σ(z) - (1 - y) log(1 - σ(z)) = softplus(z) - y z.

  Args:
    logits: float[B], the model's pre-sigmoid outputs z.
    labels: float[B] in [0, 1] (soft labels allowed).
  Returns:
    float[B] per-example losses.
  """
  logits = logits.astype(jnp.float32)
  return jax.nn.softplus(logits) - labels * logits


def mse(preds: Array, targets: Array) -> Array:
  """Squared error (y_hat - y)^2, float[B]."""
  return jnp.square(preds.astype(jnp.float32) - targets)


def huber(preds: Array, targets: Array, *, delta: float = 1.0) -> Array:
  """Huber loss: r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond."""
  r = jnp.abs(preds.astype(jnp.float32) - targets)
  return jnp.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
  """Softmax cross-entropy for a multiclass task, numerically stable.

  l = logsumexp_c z_c - z_y.

  Args:
    logits: float[B, C], the model's pre-softmax outputs z.
    labels: float[B], class ids in [0, C) stored as floats (cast to int).
  Returns:
    float[B] per-example losses.
  """
  logits = logits.astype(jnp.float32)
  ids = labels.astype(jnp.int32)
  picked = jnp.take_along_axis(logits, ids[:, None], axis=-1)[:, 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def in_batch_softmax(logits: Array, labels: Array) -> Array:
  """In-batch sampled softmax of a two-tower retrieval task.

  Row i of `logits` scores user i against the items of every row j of the
  batch (the positives of the other rows are row i's negatives; Covington
  et al., RecSys 2016; Yi et al., RecSys 2019, eq. 3 with the logQ
  correction already subtracted by the model); the target is the diagonal:
    l_i = y_i (logsumexp_j S_ij - S_ii).
  Padded columns must already hold a very negative value (the model masks
  them); padded rows are dropped by the shared weighted mean.

  Args:
    logits: float[B, B] in-batch scores S (`mtkd_jax.models.retrieval`).
    labels: float[B], 1 for a positive interaction, 0 for a row that only
      serves as a negative column (its own loss is zeroed).
  Returns:
    float[B] per-example losses.
  """
  logits = logits.astype(jnp.float32)
  diag = jnp.diagonal(logits)
  return labels * (jax.nn.logsumexp(logits, axis=-1) - diag)


LOSSES: Dict[str, Callable[[Array, Array], Array]] = {
    "bce": binary_cross_entropy,
    "mse": mse,
    "huber": huber,
    "softmax_ce": softmax_cross_entropy,
    "in_batch_softmax": in_batch_softmax,
}


def get_loss(name: str) -> Callable[[Array, Array], Array]:
  return registry.lookup(LOSSES, name, "loss")


def weighted_sum_and_count(values: Array, weights: Array) -> Tuple[Array, Array]:
  """(sum_i w_i v_i, sum_i w_i): the sufficient statistics of a weighted mean."""
  return jnp.sum(weights * values), jnp.sum(weights)


def weighted_mean(values: Array, weights: Array) -> Array:
  """sum_i w_i v_i / max(sum_i w_i, tiny); padding (w = 0) never counts."""
  total, count = weighted_sum_and_count(values, weights)
  return total / jnp.maximum(count, jnp.finfo(jnp.float32).tiny)


def multitask_loss(
    terms: Mapping[str, Array],
    term_weights: Mapping[str, float],
) -> Tuple[Array, Dict[str, Array]]:
  """The weighted total sum_t w_t L_t over named loss terms.

  Args:
    terms: name -> scalar loss (e.g. {"ctr": .., "cvr": .., "kd/ctr": ..}).
    term_weights: name -> w_t; every term needs a weight.
  Returns:
    (total, terms) so every term is reported by name next to the total.
  """
  missing = set(terms) - set(term_weights)
  if missing:
    raise ValueError(f"No weight for loss terms {sorted(missing)}.")
  total = sum(term_weights[name] * value for name, value in terms.items())
  return total, dict(terms)
