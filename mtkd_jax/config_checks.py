"""Range checks on a config's counts, periods and rates, before any run.

A value out of range (batch_size=0, num_steps=-5, log_every=0, a negative
learning rate) stops the run at once with a ConfigError naming the key, the
allowed range and the override that fixes it, instead of failing deep inside
the loop or, worse, training silently with it. Keys a config lacks (the
`data.*` keys depend on the dataset) are skipped.
"""
import math

from mtkd_jax import errors
from mtkd_jax import weighting

# key -> what it counts; each must be >= 1.
POSITIVE_COUNTS = {
    "train.batch_size": "examples per training step, over all devices",
    "eval.batch_size": "examples per evaluation step",
    "train.log_every": "steps between metric logs",
    "train.keep_checkpoints": "latest checkpoints kept",
    "train.steps_per_call": "training steps per compiled call",
}
# key -> what it counts; each must be >= 0 (0 means off / all / automatic).
NON_NEGATIVE_COUNTS = {
    "train.num_epochs": "epochs (0 needs num_steps > 0)",
    "train.num_steps": "training steps (0 = num_epochs epochs)",
    "train.eval_every": "steps between evaluations (0 = only at the end)",
    "train.checkpoint_every": "steps between checkpoints (0 = only at the end)",
    "train.patience": "evaluations without improvement (0 = never stop)",
    "train.num_devices": "devices (0 = all)",
    "optimizer.warmup_steps": "warm-up steps",
    "weighting.diagnostics_every": "steps between gradient diagnostics "
                                   "(0 = off)",
    "data.max_examples": "training rows kept (0 = all)",
}
# key -> what it is; each must be finite and >= 0 (learning_rate = 0 is a
# legitimate frozen-model run; a negative one ascends the loss).
NON_NEGATIVE_REALS = {
    "optimizer.learning_rate": "the optimizer's learning rate",
    "optimizer.grad_clip_norm": "the gradient clipping norm (0 = off)",
    "optimizer.weight_decay": "the weight decay",
}


def _get(config, key):
  node = config
  for part in key.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def _fail(key, value, allowed, meaning):
  raise errors.ConfigError(
      f"{key} must be {allowed} ({meaning}), got {value!r}: pass "
      f"--config.{key}=<a value {allowed}>.")


def check_config(config) -> None:
  """Raises ConfigError for the first count, period or rate out of range."""
  for key, meaning in POSITIVE_COUNTS.items():
    value = _get(config, key)
    if value is not None and value < 1:
      _fail(key, value, ">= 1", meaning)
  for key, meaning in NON_NEGATIVE_COUNTS.items():
    value = _get(config, key)
    if value is not None and value < 0:
      _fail(key, value, ">= 0", meaning)
  for key, meaning in NON_NEGATIVE_REALS.items():
    value = _get(config, key)
    if value is not None and not (math.isfinite(value) and value >= 0):
      _fail(key, value, ">= 0 and finite", meaning)
  if "weighting" in config and "name" in config.weighting:
    weighting.from_config(config.weighting)  # unknown names and settings
  steps, epochs = _get(config, "train.num_steps"), _get(config, "train.num_epochs")
  if steps == 0 and epochs == 0:
    raise errors.ConfigError(
        "train.num_epochs and train.num_steps are both 0: nothing to train; "
        "pass --config.train.num_epochs=<n >= 1> or "
        "--config.train.num_steps=<n >= 1>.")
