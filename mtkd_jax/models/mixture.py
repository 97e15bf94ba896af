"""MMoE's rep-grad hook: the Gram of the representation gradients from the
gated mixture, without forming them (`MMoE.rep_gram`).

A model whose shared representation E [B, E, H] reaches every loss only
through `mixture = layers.mix_experts(gates, E)`, perturbed at
`layers.MIXTURE_SITE`, with its gates A [B, T, E] as `Aux.mixture_gates`,
gets term s's gradient w.r.t. E as R_s[b] = A[b]^T C_s[b], C_s =
dL_s/d(mixture) [B, T, H], so

  <R_s, R_r> = sum_b sum_{t,u} (A A^T)[b, t, u] <C_s[b, t], C_r[b, u]>,

computed from the mixture gradients (the towers' backward only), without
the [T, B, E, H] representation gradients. When the terms are the tasks in
the mixture's slot order (slot t feeds task t's tower alone), C_s is
nonzero in slot s only: one VJP of the summed terms gives every
c_s = C_s[:, s], and G_sr = sum_b (A A^T)[b, s, r] <c_s[b], c_r[b]>.
"""
import jax
import jax.numpy as jnp
from jax import lax

from mtkd_jax.models import layers
from mtkd_jax.weighting import gram as gram_lib


def mixture_rep_gram(rep_vjp, perturbations, model_aux, num_terms: int, dtype,
                     *, exclusive: bool = True,
                     slot_per_term: bool = False) -> jax.Array:
  """This device's Gram matrix of the per-term gradients w.r.t. the shared
  representation (the "shared" perturbation); `gram.representation_gram`'s
  signature.

  Args:
    rep_vjp: cotangent float[T] -> {site: gradient}.
    perturbations: the zero perturbations {site: array}.
    model_aux: the model's `base.Aux` (its mixture_gates: A [B, T, E]).
    num_terms: T.
    dtype: the terms' dtype.
    exclusive: the terms read E only through the model's outputs (False
      when e.g. a distillation hint reads E itself: then the general form).
    slot_per_term: the terms are the tasks, in the mixture's slot order.
  """
  gates = model_aux.mixture_gates
  eye = jnp.eye(num_terms, dtype=dtype)
  if gates is None or layers.MIXTURE_SITE not in perturbations or not exclusive:
    rep_grads = jax.vmap(rep_vjp)(eye)  # towers only (DCE)
    rep_grads = {k: v for k, v in rep_grads.items() if k != layers.MIXTURE_SITE}
    return gram_lib.gram_matrix(rep_grads, num_terms)
  gates = gates.astype(jnp.float32)
  metric = jnp.einsum("bte,bue->btu", gates, gates,
                      precision=lax.Precision.HIGHEST)  # [B, T, T]
  num_mixed = metric.shape[1]
  if slot_per_term and num_mixed == num_terms:
    slots = rep_vjp(jnp.ones((num_terms,), dtype))[layers.MIXTURE_SITE]
    slots = slots.astype(jnp.float32)  # [B, T, H]: c_t = C_t[:, t]
    inner = jnp.einsum("bth,buh->btu", slots, slots,
                       precision=lax.Precision.HIGHEST)
    return jnp.sum(metric * inner, axis=0)
  mix_grads = jax.vmap(lambda ct: rep_vjp(ct)[layers.MIXTURE_SITE])(eye)
  mix_grads = mix_grads.astype(jnp.float32)  # [S, B, T, H]
  # N_s[b, u] = sum_t metric[b, t, u] C_s[b, t]: a sum of T products.
  weighted = sum(metric[None, :, t, :, None] * mix_grads[:, :, t, None, :]
                 for t in range(num_mixed))
  return gram_lib.gram_matrix({"l": weighted}, num_terms, {"r": mix_grads})
