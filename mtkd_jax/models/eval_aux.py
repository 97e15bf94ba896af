"""The aux entries a model reports per example at evaluation."""
from typing import Any, Dict

# A model may name its own in a class attribute `eval_aux_keys`.
DEFAULT_KEYS = ("gates",  # gated models' expert weights, float[B, T, E]
                "cvr_logits")  # ESMM's conversion logits, float[B]


def eval_aux(model, aux: Dict[str, Any]) -> Dict[str, Any]:
  """{key: aux[key]} for the model's per-example evaluation outputs."""
  keys = getattr(model, "eval_aux_keys", DEFAULT_KEYS)
  return {k: aux[k] for k in keys if k in aux}
