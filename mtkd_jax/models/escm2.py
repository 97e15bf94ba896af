"""ESCM2: Entire Space Counterfactual Multi-task Model (Wang et al., SIGIR 2022).

"ESCM^2: Entire Space Counterfactual Multi-Task Model for Post-Click
Conversion Rate Estimation" (arXiv 2204.05125). ESMM's towers (a CTR and a
CVR tower over one shared embedding, pCTCVR = pCTR * pCVR supervised on all
impressions) plus a counterfactual CVR risk that de-biases the CVR tower:

  L = L_CTR + lambda_g L_CTCVR + lambda_c L_CVR,

with lambda_g the ctcvr task's weight (config tasks.<ctcvr>.weight) and
lambda_c = `counterfactual_weight`. Over the impressions D, with o_i the
click label, r_i the conversion label (the click-and-convert label: on a
clicked row they agree), e_i = BCE(pCVR_i, r_i) and the propensity
o^_i = max(pCTR_i, min_propensity) (held fixed: no gradient flows into the
CTR tower through it, as in the authors' IPS weights):

  IPS:  L_CVR = 1/|D| sum_i o_i e_i / o^_i                          (eq. 9)
  DR:   L_CVR = 1/|D| sum_i [e^_i + o_i (e_i - e^_i) / o^_i]        (eq. 11)
        + the imputation risk 1/|D| sum_i o_i (e_i - e^_i)^2 / o^_i,

e^_i the imputed error of a third tower (`imputation`, the same MLP shape).
The DR error term treats e^ as fixed and the imputation risk treats e as
fixed (the alternating updates of doubly robust joint learning, Wang et al.
ICML 2019, in one step): the CVR tower learns from the first, the
imputation tower from the second.

The counterfactual terms need the labels: the model returns them in
`aux.aux_losses` ("escm2/ips", or "escm2/dr" and "escm2/imputation",
per example, weighted by lambda_c) when the batch carries both funnel
labels; the train step averages them over all impressions.
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd_jax import errors
from mtkd_jax import losses as losses_lib
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import conversion
from mtkd_jax.models import embedding
from mtkd_jax.models import layers

COUNTERFACTUALS = ("ips", "dr")


def counterfactual_terms(ctr_logit, cvr_logit, clicked, converted, *,
                         kind: str, min_propensity: float,
                         imputed=None):
  """ESCM2's per-example counterfactual CVR risks (module docstring).

  Args:
    ctr_logit, cvr_logit: float[B], the CTR and CVR towers' logits.
    clicked: float[B] o_i in {0, 1}; converted: float[B] r_i in {0, 1}.
    kind: "ips" or "dr".
    min_propensity: the propensity's lower clip.
    imputed: float[B] e^_i (DR only).
  Returns:
    {"escm2/ips": [B]} or {"escm2/dr": [B], "escm2/imputation": [B]},
    unweighted (their means over D are the paper's risks).
  """
  error = losses_lib.binary_cross_entropy(cvr_logit, converted)  # e_i
  propensity = jnp.maximum(jax.lax.stop_gradient(jax.nn.sigmoid(ctr_logit)),
                           min_propensity)
  if kind == "ips":
    return {"escm2/ips": clicked * error / propensity}
  fixed_imputed = jax.lax.stop_gradient(imputed)
  residual = jax.lax.stop_gradient(error) - imputed
  return {"escm2/dr": fixed_imputed + clicked * (error - fixed_imputed)
                      / propensity,
          "escm2/imputation": clicked * residual**2 / propensity}


class ESCM2(nn.Module):
  """ESCM2 with the IPS or DR counterfactual CVR risk (module docstring).

  Attributes:
    funnel_tasks: (click task, click-and-convert task), the dataset's tasks.
    bottom_hidden, tower_hidden: each tower is an MLP bottom + tower + (1,).
    counterfactual: "ips" or "dr".
    counterfactual_weight: lambda_c.
    min_propensity: lower clip of pCTR in the inverse-propensity weights.
  Returns: ESMM's outputs ({click: pCTR logit, click-and-convert: pCTCVR
  logit}) and aux (cvr_logits: the CVR tower's logit; aux_losses: the
  weighted counterfactual terms; diagnostics["imputed_error"] for DR).
  Task-specific params: the imputation tower (DR), which serves the
  counterfactual term alone.
  """
  spec: specs_lib.DatasetSpec
  funnel_tasks: Tuple[str, str] = ("ctr", "ctcvr")
  bottom_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0
  counterfactual: str = "dr"
  counterfactual_weight: float = 0.5
  min_propensity: float = 0.05

  @property
  def task_specific_params(self):
    return ("imputation",) if self.counterfactual == "dr" else ()

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    if self.counterfactual not in COUNTERFACTUALS:
      raise errors.ConfigError(
          f"Unknown ESCM2 counterfactual {self.counterfactual!r}; valid: "
          f"{', '.join(COUNTERFACTUALS)}.")
    conversion.check_funnel(self.spec, self.funnel_tasks, "ESCM2")
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    x = self.perturb("shared", x)  # the shared part; for rep-grad weighting
    ctr, cvr = conversion.funnel_towers(self, x, train)
    click, convert = self.funnel_tasks
    outputs = {click: ctr, convert: conversion.ctcvr_logit(ctr, cvr)}
    imputed, diagnostics = None, {}
    if self.counterfactual == "dr":
      hidden = tuple(self.bottom_hidden) + tuple(self.tower_hidden) + (1,)
      imputed = layers.StackedMLP(1, hidden, self.dropout,
                                  final_activation=False, name="imputation")(
                                      x, train=train)[:, 0, 0]
      diagnostics["imputed_error"] = imputed
    aux_losses = {}
    if f"labels/{click}" in batch and f"labels/{convert}" in batch:
      terms = counterfactual_terms(
          ctr, cvr, batch[f"labels/{click}"], batch[f"labels/{convert}"],
          kind=self.counterfactual, min_propensity=self.min_propensity,
          imputed=imputed)
      aux_losses = {k: self.counterfactual_weight * v for k, v in terms.items()}
    aux = base.Aux(shared=x, task_inputs=jnp.broadcast_to(
        x[:, None], (x.shape[0], 2, x.shape[1])), cvr_logits=cvr,
                   aux_losses=aux_losses, diagnostics=diagnostics)
    return outputs, aux
