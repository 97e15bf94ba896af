"""One network (column) per task: cross-stitch networks and single-task models.

The contract of `base.py`: `__call__(batch, *, train) -> (outputs, aux)`.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mtkd_jax import errors
from mtkd_jax.data import specs as specs_lib
from mtkd_jax.models import base
from mtkd_jax.models import embedding
from mtkd_jax.models import layers
from mtkd_jax.models import mtl

CROSS_STITCH_INITS = ("identity", "balanced")


def cross_stitch_init(kind: str, num_tasks: int) -> np.ndarray:
  """The initial T x T cross-stitch matrix alpha (Misra et al. 2016, sec. 3).

  "identity": alpha = I, the columns start as independent networks;
  "balanced": the paper's (alpha_S, alpha_D) = (0.9, 0.1), i.e. 0.9 on the
  diagonal and 0.1 / (T - 1) elsewhere, so every row sums to 1.
  """
  if kind == "identity" or num_tasks == 1:
    return np.eye(num_tasks, dtype=np.float32)
  if kind == "balanced":
    other = 0.1 / (num_tasks - 1)
    return (np.full((num_tasks, num_tasks), other) +
            (0.9 - other) * np.eye(num_tasks)).astype(np.float32)
  raise errors.ConfigError(f"Unknown cross-stitch alpha_init {kind!r}; valid: "
                           f"{', '.join(CROSS_STITCH_INITS)}.")


class CrossStitch(nn.Module):
  """Cross-stitch networks (Misra et al., CVPR 2016, eq. 1).

  One MLP column per task over the shared embedding (the input layer); after
  each hidden layer l of the columns (sizes `bottom_hidden`), a cross-stitch
  unit with a learned alpha^l in R^{T x T} mixes the tasks' activations,
    x~_t^l = sum_s alpha^l_{ts} x_s^l,
  then one tower per task (`tower_hidden` + (1,)). With alpha = I the model
  is T independent column + tower networks. (The paper also trains alpha
  with a larger learning rate; here it shares the optimizer's.)

  Params: column_{l} (the T columns' layer l, stacked), cross_stitch_{l}
  (alpha^l, float[T, T]), towers. aux.shared, aux.task_inputs: the
  stitched last column layer, float[B, T, H].
  """
  spec: specs_lib.DatasetSpec
  bottom_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  alpha_init: str = "balanced"
  dropout: float = 0.0
  task_specific_params = ("towers",)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    num_tasks = len(self.spec.tasks)
    alpha0 = cross_stitch_init(self.alpha_init, num_tasks)
    h = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    h = self.perturb("shared", h)  # the shared part; for rep-grad weighting
    for l, width in enumerate(self.bottom_hidden):
      h = layers.StackedMLP(num_tasks, (width,), self.dropout,
                            name=f"column_{l}")(h, train=train)  # [B, T, H]
      alpha = self.param(f"cross_stitch_{l}", lambda *_: jnp.asarray(alpha0))
      h = jnp.einsum("ts,bsh->bth", alpha, h)
    if h.ndim == 2:  # no column layers: every tower reads the embedding
      h = jnp.broadcast_to(h[:, None], (h.shape[0], num_tasks, h.shape[-1]))
    logits = layers.StackedMLP(
        num_tasks, tuple(self.tower_hidden) + (mtl.head_width(self.spec),),
        self.dropout, final_activation=False,
        name="towers")(h, train=train)
    return mtl._task_outputs(self.spec, logits), base.Aux(shared=h,
                                                          task_inputs=h)


class _TaskNetwork(nn.Module):
  """embedding -> bottom MLP -> tower MLP -> logit(s), for one task.

  `width` 1 gives float[B] (binary / regression), C gives float[B, C].
  """
  spec: specs_lib.DatasetSpec
  bottom_hidden: Sequence[int]
  tower_hidden: Sequence[int]
  dropout: float
  width: int = 1

  @nn.compact
  def __call__(self, batch, *, train: bool):
    x = embedding.FeatureEmbedding(self.spec, name="embedding")(batch)
    h = layers.MLP(self.bottom_hidden, self.dropout, name="bottom")(x, train=train)
    t = layers.MLP(self.tower_hidden, self.dropout, name="tower")(h, train=train)
    logits = nn.Dense(self.width, name="logit")(t)
    return (logits[:, 0] if self.width == 1 else logits), h


class SingleTask(nn.Module):
  """T independent single-task models: the no-sharing baseline.

  Task t has its own embedding tables, bottom MLP and tower (submodule
  `task_<name>`): y_t = tower_t(bottom_t(embed_t(x))). No parameter is
  shared, so no task's loss moves another task's output.
  aux.shared, aux.task_inputs: the per-task bottoms, float[B, T, H]
  (nothing is shared; kept for the common aux interface).
  """
  spec: specs_lib.DatasetSpec
  bottom_hidden: Sequence[int] = (256, 128)
  tower_hidden: Sequence[int] = (64,)
  dropout: float = 0.0

  @property
  def task_specific_params(self):
    return tuple(f"task_{t}" for t in self.spec.task_names)

  @nn.compact
  def __call__(self, batch, *, train: bool = False):
    outputs, bottoms = {}, []
    for spec_task in self.spec.tasks:
      task = spec_task.name
      width = spec_task.num_classes if spec_task.kind == "multiclass" else 1
      outputs[task], h = _TaskNetwork(
          self.spec, tuple(self.bottom_hidden), tuple(self.tower_hidden),
          self.dropout, width, name=f"task_{task}")(batch, train=train)
      bottoms.append(h)
    bottoms = jnp.stack(bottoms, axis=1)
    return outputs, base.Aux(shared=bottoms, task_inputs=bottoms)
