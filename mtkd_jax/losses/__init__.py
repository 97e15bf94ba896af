"""Pure loss functions, their registry and the multi-task total.

A loss is `fn(outputs, labels) -> float[B]` (per-example values); one shared
weighted mean (`weighted_mean`) reduces it so padding rows (weight 0) never
count. To add a loss, write the function in `task_losses.py` and add one line
to `LOSSES`. Distillation losses (soft targets, ranking, listwise, hints,
ensembles, DML, CrossDistil) are in `distillation.py`, registry KD_LOSSES.
"""
from mtkd_jax.losses import distillation
from mtkd_jax.losses.task_losses import binary_cross_entropy
from mtkd_jax.losses.task_losses import huber
from mtkd_jax.losses.task_losses import in_batch_softmax
from mtkd_jax.losses.task_losses import LOSSES
from mtkd_jax.losses.task_losses import get_loss
from mtkd_jax.losses.task_losses import mse
from mtkd_jax.losses.task_losses import multitask_loss
from mtkd_jax.losses.task_losses import softmax_cross_entropy
from mtkd_jax.losses.task_losses import weighted_mean
from mtkd_jax.losses.task_losses import weighted_sum_and_count
