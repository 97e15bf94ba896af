"""Conversion-funnel models: ESMM and AITM (impression -> click -> convert).

Both read the tasks as steps of a funnel and follow the contract of
`base.py`: `__call__(batch, *, train) -> ({task: logit float[B]}, aux)`.
Models that add a regulariser return it per example in
`aux.aux_losses = {name: float[B]}` (already multiplied by its weight); the
train step adds each as a loss term.
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd_jax import errors
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers


def ctcvr_logit(ctr_logit, cvr_logit):
  """logit(sigmoid(a) * sigmoid(b)), computed without cancellation.

  log p = log_sigmoid(a) + log_sigmoid(b), and 1 - p is split into two
  positive parts, 1 - s(a) s(b) = s(-a) + s(a) s(-b), so
    log(1 - p) = logaddexp(log_sigmoid(-a), log_sigmoid(a) + log_sigmoid(-b))
  is exact for every a, b (unlike log(-expm1(log p)), which loses 1 - p once
  both logits pass ~88 in float32); logit = log p - log(1 - p).
  """
  log_p = jax.nn.log_sigmoid(ctr_logit) + jax.nn.log_sigmoid(cvr_logit)
  log_1mp = jnp.logaddexp(jax.nn.log_sigmoid(-ctr_logit),
                          jax.nn.log_sigmoid(ctr_logit) +
                          jax.nn.log_sigmoid(-cvr_logit))
  return log_p - log_1mp


def _check_binary(spec, model):
  for task in spec.tasks:
    if task.kind != "binary":
      raise errors.ConfigError(f"{model} models binary funnel steps; task "
                               f"{task.name!r} is {task.kind}.")


def check_funnel(spec, funnel_tasks, model):
  """The spec's tasks are exactly (click, click-and-convert), binary.

  In the dataset's order too: evaluation reads click, conversion as the
  first two tasks (evaluate.split_metrics, cvr/auc_clicked).
  """
  if tuple(funnel_tasks) != tuple(spec.task_names):
    raise errors.ConfigError(
        f"{model} predicts exactly model.funnel_tasks = {tuple(funnel_tasks)} "
        f"(click, click-and-convert), in the dataset's order; the dataset's "
        f"tasks are {spec.task_names}.")
  _check_binary(spec, model)


def funnel_towers(module, x, train, num=2):
  """(ctr logit, cvr logit, ...) float[B] each: `num` towers over x, each an
  MLP `bottom_hidden` + `tower_hidden` + (1,), stacked as "towers"."""
  hidden = tuple(module.bottom_hidden) + tuple(module.tower_hidden) + (1,)
  logits = layers.StackedMLP(num, hidden, module.dropout,
                             final_activation=False, name="towers")(
                                 x, train=train)[..., 0]
  return tuple(logits[:, i] for i in range(num))


class ESMM(nn.Module):
  """Entire Space Multi-task Model (Ma et al., SIGIR 2018, eq. 1-3).

  Two towers over ONE shared embedding (the paper's embedding sharing):
    pCTR = sigmoid(f_ctr(x)), pCVR = sigmoid(f_cvr(x)), pCTCVR = pCTR * pCVR.
  Both supervised terms live on all impressions: the click label on pCTR and
  the click-and-convert label on pCTCVR; pCVR is never fitted on clicked
  samples alone (it is learnt through pCTCVR), which removes the sample
  selection bias.

  `funnel_tasks` = (click task, click-and-convert task) names in the dataset
  (`check_funnel`). Each tower is an MLP `bottom_hidden` + `tower_hidden` +
  (1,) (the paper's towers are whole base networks); tower 0 is the CTR
  tower, tower 1 the CVR tower.

  Returns:
    outputs: {funnel_tasks[0]: logit of pCTR, funnel_tasks[1]: logit of
      pCTCVR (`ctcvr_logit`)}; aux.cvr_logits: float[B], the CVR tower's
    logit (evaluate CVR on clicked rows with it); aux.shared: the embedding
    float[B, D]; aux.task_inputs: the embedding broadcast to float[B, 2, D].
  """
  spec: specs_lib.DatasetSpec
  funnel_tasks: Tuple[str, str] = ("ctr", "ctcvr")
  bottom_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0
  # Both towers feed pCTCVR, so no parameter serves one loss term only.
  task_specific_params = ()

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    check_funnel(self.spec, self.funnel_tasks, "ESMM")
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    x = self.perturb("shared", x)  # the shared part; for rep-grad weighting
    ctr, cvr = funnel_towers(self, x, train)
    outputs = {self.funnel_tasks[0]: ctr,
               self.funnel_tasks[1]: ctcvr_logit(ctr, cvr)}
    aux = base.Aux(shared=x, task_inputs=jnp.broadcast_to(
        x[:, None], (x.shape[0], 2, x.shape[1])), cvr_logits=cvr)
    return outputs, aux


class AttentionTransfer(nn.Module):
  """AIT module (Xi et al., KDD 2021, eq. 3-4) over U candidate vectors.

  w_u = softmax_u(<h1(u), h2(u)> / sqrt(k)), z = sum_u w_u h3(u), with
  h1, h2, h3 bias-free linear maps R^k -> R^k (as the authors' code).

  Inputs: float[B, U, k]. Returns (z float[B, k], w float[B, U]).
  """

  @nn.compact
  def __call__(self, candidates):
    dim = candidates.shape[-1]
    h1 = nn.Dense(dim, use_bias=False, name="h1")(candidates)
    h2 = nn.Dense(dim, use_bias=False, name="h2")(candidates)
    h3 = nn.Dense(dim, use_bias=False, name="h3")(candidates)
    w = nn.softmax(jnp.sum(h1 * h2, axis=-1) / jnp.sqrt(dim), axis=-1)
    return jnp.einsum("bu,buk->bk", w, h3), w


class AITM(nn.Module):
  """Adaptive Information Transfer Multi-task (Xi et al., KDD 2021, sec. 3).

  Tasks are the funnel's steps in spec order (first = click). Over a shared
  embedding, task t's tower gives q_t; z_1 = q_1 and, for t >= 2,
    p_{t-1} = g_{t-1}(z_{t-1})       (transfer MLP: Dense(k) + ReLU),
    z_t = AIT({p_{t-1}, q_t})        (`AttentionTransfer`),
  and y_t = sigmoid(Dense_1(z_t)) (returned as its logit).

  Behavioural Expectation Calibrator (eq. 6), per example:
    L_lc = alpha * sum_{t>=2} max(y_t - y_{t-1}, 0)   (probabilities),
  alpha = calibration_weight (paper 0.6), returned as
  aux.aux_losses["aitm/calibration"] float[B].

  Each tower is an MLP `bottom_hidden` + `tower_hidden` (the paper's towers
  are whole base networks). aux.diagnostics["attention"]: float[B, T-1, 2],
  the AIT weights of (p_{t-1}, q_t) for t = 2..T. Task-specific parameters:
  the output heads and the last task's transfer and attention (tower t and
  the transfer into t < T feed every later task).
  """
  spec: specs_lib.DatasetSpec
  bottom_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  calibration_weight: float = 0.6
  dropout: float = 0.0

  @property
  def task_specific_params(self):
    last = len(self.spec.tasks)
    if last < 2:
      return ("heads",)
    return ("heads", f"transfer_{last - 1}", f"attention_{last}")

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    num_tasks = len(self.spec.tasks)
    _check_binary(self.spec, "AITM")
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    x = self.perturb("shared", x)  # the shared part; for rep-grad weighting
    q = layers.StackedMLP(num_tasks,
                          tuple(self.bottom_hidden) + tuple(self.tower_hidden),
                          self.dropout, name="towers")(x, train=train)  # [B, T, k]
    dim = q.shape[-1]
    z, attention = [q[:, 0]], []
    for t in range(1, num_tasks):
      p = nn.relu(nn.Dense(dim, name=f"transfer_{t}")(z[-1]))
      if self.dropout > 0:
        p = nn.Dropout(self.dropout, deterministic=not train)(p)
      z_t, w = AttentionTransfer(name=f"attention_{t + 1}")(
          jnp.stack([p, q[:, t]], axis=1))
      z.append(z_t)
      attention.append(w)
    z = jnp.stack(z, axis=1)  # [B, T, k]
    logits = layers.StackedMLP(num_tasks, (1,), final_activation=False,
                               name="heads")(z, train=train)[..., 0]
    probs = jax.nn.sigmoid(logits)
    calibration = jnp.sum(jax.nn.relu(probs[:, 1:] - probs[:, :-1]), axis=1)
    attention = (jnp.stack(attention, axis=1) if attention else
                 jnp.zeros((x.shape[0], 0, 2), x.dtype))
    aux = base.Aux(shared=x, task_inputs=z,
                   aux_losses={"aitm/calibration":
                               self.calibration_weight * calibration},
                   diagnostics={"attention": attention})
    return {t: logits[:, i] for i, t in enumerate(self.spec.task_names)}, aux
