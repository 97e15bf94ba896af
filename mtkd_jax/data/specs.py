"""Frozen descriptions of a dataset's features and tasks.

Datasets produce a `DatasetSpec`; models, losses and metrics read it. Nothing
downstream hard-codes a dataset: the embedding layer builds its tables from
`spec.sparse` / `spec.multi_hot`, the loss builds its terms from `spec.tasks`.

Batch layout (a flat dict of arrays, leading axis = examples):
  "sparse":            int32[B, F]   one id per sparse field, F = len(spec.sparse)
  "dense":             float32[B, D] D = len(spec.dense)
  "multi_hot/<name>":  int32[B, K]   up to K ids per example, padded with -1
  "sequence/<name>":   int32[B, L]   the last L ids before this example, most
                                     recent LAST, padded with -1 on the LEFT
  "labels/<task>":     float32[B]
  "weights":           float32[B]    1 for real examples, 0 for padding
  "user_id":           int32[B]      optional, for GAUC / per-user ranking
"""
import dataclasses
from typing import Optional, Tuple

from mtkd_jax import errors

TASK_KINDS = ("binary", "regression", "multiclass", "retrieval")


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
class SequenceField:
  """A behaviour sequence: the last `max_len` ids a user interacted with
  before this example, oldest first and most recent LAST, padded with -1 on
  the LEFT (`[-1, -1, 7, 3, 9]`: 9 is the latest). The encoders of
  `mtkd_jax.models.sequence` treat -1 as absent wherever it sits.

  Attributes:
    name: the batch key is `sequence/<name>`.
    vocab_size: ids lie in [0, vocab_size).
    max_len: L, the number of columns.
    embed_dim: the width of the id embeddings.
    shares: "" for an own table, or the name of a sparse field whose table
      the sequence looks its ids up in (e.g. "item_id": history items and the
      target item get the same rows); vocab_size and embed_dim must then
      equal that field's. DIN needs it: its target is that field's id.
    encoder: a name in `mtkd_jax.models.sequence.SEQUENCE_ENCODERS`. A model
      hyper-parameter, like embed_dim: `models.build_model` sets it (and
      `hidden`, `din_hidden`) from the model config.
    hidden: the GRU state / Caser output width.
    din_hidden: the widths of DIN's activation-unit MLP.
  """
  name: str
  vocab_size: int
  max_len: int
  embed_dim: int = 16
  shares: str = ""
  encoder: str = "mean"
  hidden: int = 32
  din_hidden: Tuple[int, ...] = (36,)

  def __post_init__(self):
    if self.max_len < 1:
      raise errors.ConfigError(
          f"Sequence field {self.name!r} has max_len {self.max_len}; it must "
          "be >= 1 (leave the field out of the spec for no history).")


@dataclasses.dataclass(frozen=True)
class DenseField:
  """A real-valued feature, fed to the model as it is (normalise upstream)."""
  name: str


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One prediction task.

  Attributes:
    name: the key of its labels (`labels/<name>`) and of the model's output.
    kind: "binary" (labels in {0, 1}, logits), "regression" (real labels),
      "multiclass" (class ids in [0, num_classes) stored as float32 labels;
      the model outputs logits float[B, num_classes]) or "retrieval" (a
      two-tower user -> item task, `mtkd_jax.models.retrieval`; labels are 1
      for a positive interaction, 0 for rows that are not positives).
    loss: a name in `mtkd_jax.losses.LOSSES`.
    weight: its weight w_t in the multi-task total sum_t w_t L_t.
    num_classes: C > 1 for "multiclass"; 0 for every other kind.
    item_field: for "retrieval", the sparse field holding the target item id
      (e.g. "item_id"); "" for every other kind.
    label_range: (low, high), the declared range of a "regression" task's
      labels (e.g. 1..5 stars), checked when the data loads; () = any real.
  """
  name: str
  kind: str
  loss: str
  weight: float = 1.0
  num_classes: int = 0
  item_field: str = ""
  label_range: Tuple[float, ...] = ()

  def __post_init__(self):
    if self.kind not in TASK_KINDS:
      raise errors.ConfigError(
          f"Task {self.name!r} has kind {self.kind!r}; valid kinds: "
          f"{', '.join(TASK_KINDS)}.")
    if self.kind == "multiclass" and self.num_classes < 2:
      raise errors.ConfigError(
          f"Multiclass task {self.name!r} has num_classes {self.num_classes}; "
          "it needs num_classes > 1.")
    if self.kind != "multiclass" and self.num_classes:
      raise errors.ConfigError(
          f"Task {self.name!r} of kind {self.kind!r} sets num_classes "
          f"{self.num_classes}; only multiclass tasks take num_classes.")
    if self.label_range and (self.kind != "regression" or len(
        self.label_range) != 2 or self.label_range[0] > self.label_range[1]):
      raise errors.ConfigError(
          f"Task {self.name!r} has label_range {self.label_range}; only "
          "regression tasks take one, as (low, high) with low <= high.")
    if (self.kind == "retrieval") != bool(self.item_field):
      raise errors.ConfigError(
          f"Task {self.name!r} of kind {self.kind!r} has item_field "
          f"{self.item_field!r}; retrieval tasks need one, others none.")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything a model and a loss need to know about a dataset."""
  name: str
  sparse: Tuple[SparseField, ...]
  dense: Tuple[DenseField, ...]
  tasks: Tuple[TaskSpec, ...]
  multi_hot: Tuple[MultiHotField, ...] = ()
  has_user_id: bool = False
  sequences: Tuple[SequenceField, ...] = ()
  # Names of the sparse and multi-hot fields that describe the item (e.g.
  # item_id, release_decade, genres): the item tower of a retrieval task
  # reads these, the user tower every other input.
  item_fields: Tuple[str, ...] = ()
  # The embedding tables' rows are padded with zero rows to a multiple of
  # this: the model-axis size of a mesh that shards them (train/mesh.py).
  table_row_multiple: int = 1

  def __post_init__(self):
    sparse = {f.name: f for f in self.sparse}
    known = set(sparse) | {m.name for m in self.multi_hot}
    unknown = [f for f in self.item_fields if f not in known]
    if unknown:
      raise errors.ConfigError(
          f"item_fields {unknown} of {self.name} are not sparse or multi-hot "
          f"fields; fields: {', '.join(sorted(known))}.")
    for task in self.tasks:
      if task.kind == "retrieval" and (task.item_field not in sparse or
                                       task.item_field not in self.item_fields):
        raise errors.ConfigError(
            f"Retrieval task {task.name!r} names item_field "
            f"{task.item_field!r}; it must be a sparse field listed in "
            f"item_fields {list(self.item_fields)}.")
    for seq in self.sequences:
      if not seq.shares:
        continue
      shared = sparse.get(seq.shares)
      if shared is None:
        raise errors.ConfigError(
            f"Sequence field {seq.name!r} shares the table of {seq.shares!r}, "
            f"which is not a sparse field of {self.name}; sparse fields: "
            f"{', '.join(sparse)}.")
      if (seq.vocab_size, seq.embed_dim) != (shared.vocab_size,
                                             shared.embed_dim):
        raise errors.ConfigError(
            f"Sequence field {seq.name!r} (vocab_size {seq.vocab_size}, "
            f"embed_dim {seq.embed_dim}) shares the table of {seq.shares!r} "
            f"(vocab_size {shared.vocab_size}, embed_dim {shared.embed_dim}); "
            "both must match.")

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


def spec_to_dict(spec: DatasetSpec) -> dict:
  """A JSON-able dict of `spec` (`spec_from_dict` reads it back)."""
  return dataclasses.asdict(spec)


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def spec_from_dict(d: dict) -> DatasetSpec:
  """The DatasetSpec of `spec_to_dict(spec)` (lists back to tuples)."""
  fields = {"sparse": SparseField, "dense": DenseField, "tasks": TaskSpec,
            "multi_hot": MultiHotField, "sequences": SequenceField}
  kwargs = {k: _tuples(v) for k, v in d.items() if k not in fields}
  for key, cls in fields.items():
    kwargs[key] = tuple(cls(**{k: _tuples(v) for k, v in f.items()})
                        for f in d.get(key, ()))
  return DatasetSpec(**kwargs)
