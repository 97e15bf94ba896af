"""Frozen descriptions of a dataset's features and tasks.

Datasets produce a `DatasetSpec`; models, losses and metrics read it. Nothing
downstream hard-codes a dataset: the embedding layer builds its tables from
`spec.sparse` / `spec.multi_hot`, the loss builds its terms from `spec.tasks`.

Batch layout (a flat dict of arrays, leading axis = examples):
  "sparse":            int32[B, F]   one id per sparse field, F = len(spec.sparse)
  "dense":             float32[B, D] D = len(spec.dense)
  "multi_hot/<name>":  int32[B, K]   up to K ids per example, padded with -1
  "labels/<task>":     float32[B]
  "weights":           float32[B]    1 for real examples, 0 for padding
  "user_id":           int32[B]      optional, for GAUC / per-user ranking
"""
import dataclasses
from typing import Optional, Tuple

from mtkd_jax import errors

TASK_KINDS = ("binary", "regression")


@dataclasses.dataclass(frozen=True)
class SparseField:
  """A categorical field with one id per example, ids in [0, vocab_size)."""
  name: str
  vocab_size: int
  embed_dim: int = 16


@dataclasses.dataclass(frozen=True)
class MultiHotField:
  """A categorical field with up to `max_len` ids per example (-1 pads).

  Its embedding is the mean of the embeddings of the ids present (zeros when
  none are).
  """
  name: str
  vocab_size: int
  max_len: int
  embed_dim: int = 16


@dataclasses.dataclass(frozen=True)
class DenseField:
  """A real-valued feature, fed to the model as it is (normalise upstream)."""
  name: str


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One prediction task.

  Attributes:
    name: the key of its labels (`labels/<name>`) and of the model's output.
    kind: "binary" (labels in {0, 1}, logits) or "regression" (real labels).
    loss: a name in `mtkd_jax.losses.LOSSES`.
    weight: its weight w_t in the multi-task total sum_t w_t L_t.
  """
  name: str
  kind: str
  loss: str
  weight: float = 1.0

  def __post_init__(self):
    if self.kind not in TASK_KINDS:
      raise errors.ConfigError(
          f"Task {self.name!r} has kind {self.kind!r}; valid kinds: "
          f"{', '.join(TASK_KINDS)}.")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything a model and a loss need to know about a dataset."""
  name: str
  sparse: Tuple[SparseField, ...]
  dense: Tuple[DenseField, ...]
  tasks: Tuple[TaskSpec, ...]
  multi_hot: Tuple[MultiHotField, ...] = ()
  has_user_id: bool = False

  @property
  def task_names(self) -> Tuple[str, ...]:
    return tuple(t.name for t in self.tasks)

  def task(self, name: str) -> TaskSpec:
    for t in self.tasks:
      if t.name == name:
        return t
    raise errors.ConfigError(f"Unknown task {name!r}; tasks of {self.name}: "
                     f"{', '.join(self.task_names)}.")

  def with_task_overrides(self, overrides) -> "DatasetSpec":
    """Returns a copy whose tasks take `loss` / `weight` from `overrides`.

    Args:
      overrides: mapping task name -> mapping with optional "loss", "weight".
    """
    unknown = set(overrides) - set(self.task_names)
    if unknown:
      raise errors.ConfigError(f"Task overrides name unknown tasks {sorted(unknown)}; "
                       f"tasks of {self.name}: {', '.join(self.task_names)}.")
    tasks = []
    for t in self.tasks:
      o = dict(overrides.get(t.name, {}))
      tasks.append(dataclasses.replace(
          t, loss=o.get("loss") or t.loss,
          weight=float(o["weight"]) if o.get("weight") is not None else t.weight))
    return dataclasses.replace(self, tasks=tuple(tasks))


@dataclasses.dataclass(frozen=True)
class Splits:
  """A dataset's splits, each a dict of numpy columns in the batch layout.

  `extras` carries split-level side information that is not a model input,
  e.g. `{"test": {"bayes_prob/ctr": np.ndarray}}` for synthetic data.
  """
  spec: DatasetSpec
  train: dict
  validation: dict
  test: dict
  extras: Optional[dict] = None

  def split(self, name: str) -> dict:
    if name not in ("train", "validation", "test"):
      raise errors.ConfigError(f"Unknown split {name!r}; valid: train, validation, test.")
    return getattr(self, name)
