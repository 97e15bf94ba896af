"""Online mutual distillation (DML; Zhang et al., CVPR 2018).

K peers of one architecture, with their own initialisations, are trained
together in one compiled step; each learns from the labels and from the
others' current predictions (Zhang et al. eq. 10: L_k = L_C(k) +
1/(K-1) sum_{j != k} KL(p_j || p_k), p_j fixed when peer k updates).

`MutualPeers` runs the K peers as one `nn.vmap` (parameters stacked on a
leading axis, one forward pass for all) and returns peer 0's outputs as the
model's outputs, so evaluation, checkpoint selection and export see one
student. Through `aux.aux_losses` (named loss terms of the step) it adds:
  peers/<task>   sum over peers 1..K-1 of their hard-label losses (w_t-scaled);
  kd/dml/<task>  sum over all peers of their mutual-distillation terms
                 (T^2-scaled Bernoulli / softmax KL; prediction MSE to the
                 other peers' mean for regression tasks).
Peer 0's hard loss is the task's own term. Every parameter counts as shared
for gradient-level weighting (the peers' towers are stacked in one leaf).
`aux.diagnostics["peer_outputs"]`: every peer's outputs, {task: [K, B, ...]}.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd_jax import errors
from mtkd_jax import losses as losses_lib
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.distill import methods
from mtkd_jax.losses import distillation as kd


class _Positional(nn.Module):
  """Calls `base(batch, train=train)` with `train` positional (vmap drops
  keyword arguments)."""
  base: nn.Module

  def __call__(self, batch, train):
    return self.base(batch, train=train)


class MutualPeers(nn.Module):
  """K peers of `base` trained by deep mutual learning; outputs = peer 0's."""
  base: nn.Module
  spec: specs_lib.DatasetSpec
  num_peers: int = 2
  temperature: float = 1.0
  task_specific_params = ()

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    peers = nn.vmap(_Positional, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(None, None), out_axes=0,
                    axis_size=self.num_peers)
    outputs, aux = peers(self.base, name="peers")(batch, train)
    first = {name: value[0] for name, value in outputs.items()}
    aux_first = jax.tree.map(lambda x: x[0], aux.replace(aux_losses={}))
    terms = {name: jnp.sum(v, axis=0)  # the peers' own auxiliary losses
             for name, v in aux.aux_losses.items()}
    for task in self.spec.tasks:
      if task.kind == "retrieval" or f"labels/{task.name}" not in batch:
        continue  # (serving batches carry no labels)
      value = outputs[task.name]  # [K, B] or [K, B, C]
      labels = batch[f"labels/{task.name}"]
      hard = jax.vmap(lambda o: losses_lib.get_loss(task.loss)(o, labels))(
          value[1:])
      terms[f"peers/{task.name}"] = task.weight * jnp.sum(hard, axis=0)
      if task.kind == "regression":
        others = (jnp.sum(value, axis=0, keepdims=True) - value) / (
            self.num_peers - 1)
        mutual = kd.logit_mse(value.reshape(-1, *value.shape[2:]),
                              jax.lax.stop_gradient(others).reshape(
                                  -1, *value.shape[2:])).reshape(
                                      self.num_peers, -1)
      else:
        mutual = kd.mutual_distillation(value, temperature=self.temperature)
      terms[f"kd/dml/{task.name}"] = jnp.sum(mutual, axis=0)
    return first, aux_first.replace(
        aux_losses=terms,
        diagnostics={**aux_first.diagnostics, "peer_outputs": outputs})


def maybe_wrap(model: nn.Module, spec: specs_lib.DatasetSpec, config
               ) -> nn.Module:
  """`model`, or K DML peers of it when `config.distill.dml_peers` >= 2."""
  if "distill" not in config:
    return model
  dcfg = methods.resolve_methods(config.distill)
  k = dcfg.dml_peers
  if not k:
    return model
  if k < 2:
    raise errors.ConfigError(f"distill.dml_peers must be 0 (off) or >= 2, got {k}.")
  return MutualPeers(model, spec, num_peers=int(k),
                     temperature=float(dcfg.temperature))
