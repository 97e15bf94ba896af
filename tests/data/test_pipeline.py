"""Host pipeline: deterministic order, padding, resume position, host shares."""
import numpy as np
import pytest

from mtkd_jax import errors
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import pipeline
from mtkd_jax.data import specs


def make_columns(n=10):
  return {"sparse": np.arange(n, dtype=np.int32)[:, None],
          "dense": np.zeros((n, 0), np.float32),
          "labels/y": np.arange(n, dtype=np.float32),
          "weights": np.ones(n, np.float32)}


def test_epoch_covers_every_row_once_and_pads_last_batch():
  cols = make_columns(10)
  batches = pipeline.train_batches(cols, 4, seed=3)
  epoch = [next(batches) for _ in range(pipeline.steps_per_epoch(10, 4))]
  assert [len(b["weights"]) for b in epoch] == [4, 4, 4]
  real = np.concatenate([b["labels/y"][b["weights"] > 0] for b in epoch])
  assert sorted(real.tolist()) == list(range(10))
  assert epoch[-1]["weights"].tolist() == [1, 1, 0, 0]


def test_order_is_a_function_of_seed_and_epoch_only():
  cols = make_columns(10)
  a = pipeline.train_batches(cols, 4, seed=3)
  first_two_epochs = [next(a)["labels/y"].tolist() for _ in range(6)]
  # A run resumed at step 4 reads exactly what the uninterrupted run read.
  b = pipeline.train_batches(cols, 4, seed=3, start_step=4)
  assert [next(b)["labels/y"].tolist() for _ in range(2)] == first_two_epochs[4:]
  assert first_two_epochs[:3] != first_two_epochs[3:]  # reshuffled per epoch
  c = pipeline.train_batches(cols, 4, seed=4)
  assert [next(c)["labels/y"].tolist() for _ in range(3)] != first_two_epochs[:3]


def test_eval_batches_in_order_with_zero_weight_padding():
  batches = list(pipeline.eval_batches(make_columns(10), 8))
  assert batches[0]["labels/y"].tolist() == list(range(8))
  assert batches[1]["weights"].tolist() == [1, 1] + [0] * 6


def test_each_host_reads_its_own_share(monkeypatch):
  cols = make_columns(16)
  seen = []
  for host in range(2):
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    monkeypatch.setattr(pipeline.jax, "process_index", lambda h=host: h)
    batch = next(pipeline.train_batches(cols, 8, seed=0))
    assert len(batch["weights"]) == 4
    seen.append(batch["labels/y"])
  monkeypatch.undo()
  whole = next(pipeline.train_batches(cols, 8, seed=0))["labels/y"]
  np.testing.assert_array_equal(np.concatenate(seen), whole)


def test_prefetch_keeps_order():
  assert list(pipeline.prefetch(iter(range(5)), lambda x: x, size=2)) == list(range(5))


SPEC = specs.DatasetSpec(
    name="t", sparse=(specs.SparseField("user", 5),), dense=(specs.DenseField("d"),),
    multi_hot=(specs.MultiHotField("genres", 3, 2),),
    tasks=(specs.TaskSpec("like", "binary", "bce"),))


def valid_columns():
  return {"sparse": np.array([[0], [4], [2]], np.int32),
          "dense": np.zeros((3, 1), np.float32),
          "multi_hot/genres": np.array([[0, -1], [2, 1], [-1, -1]], np.int32),
          "labels/like": np.array([0, 1, 1], np.float32),
          "weights": np.ones(3, np.float32)}


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["sparse"].__setitem__((1, 0), 5), "field 'user' row 1 has id 5 outside [0, 5)"),
    (lambda c: c["sparse"].__setitem__((2, 0), -1), "field 'user' row 2 has id -1"),
    (lambda c: c["multi_hot/genres"].__setitem__((2, 1), 3), "field 'genres' row 2"),
    (lambda c: c["dense"].__setitem__((1, 0), np.nan), "column 'dense' row 1 is not finite"),
    (lambda c: c["labels/like"].__setitem__(2, 0.5), "binary task 'like' row 2 has label 0.5"),
    (lambda c: c.pop("labels/like"), "missing columns ['labels/like']"),
])
def test_validate_columns_names_field_and_row(mutate, message):
  columns_lib.validate_columns(SPEC, valid_columns(), "train")
  cols = valid_columns()
  mutate(cols)
  with pytest.raises(errors.DataError) as e:
    columns_lib.validate_columns(SPEC, cols, "train")
  assert message in str(e.value) and str(e.value).startswith("train:")


def test_regression_label_outside_its_declared_range():
  spec = specs.DatasetSpec(
      name="t", sparse=(specs.SparseField("user", 5),), dense=(),
      tasks=(specs.TaskSpec("rating", "regression", "mse",
                            label_range=(1.0, 5.0)),))
  cols = {"sparse": np.array([[0], [1], [2]], np.int32),
          "dense": np.zeros((3, 0), np.float32),
          "labels/rating": np.array([1, 5, 3], np.float32),
          "weights": np.ones(3, np.float32)}
  columns_lib.validate_columns(spec, cols, "train")
  cols["labels/rating"][1] = 99
  with pytest.raises(errors.DataError, match=r"train: regression task "
                     r"'rating' row 1 has label 99.0, outside its declared "
                     r"range \[1, 5\]"):
    columns_lib.validate_columns(spec, cols, "train")
  with pytest.raises(errors.ConfigError, match="only regression tasks"):
    specs.TaskSpec("like", "binary", "bce", label_range=(0.0, 1.0))


def test_task_overrides():
  spec = SPEC.with_task_overrides({"like": {"loss": "mse", "weight": 2.0}})
  assert spec.task("like").loss == "mse" and spec.task("like").weight == 2.0
  with pytest.raises(errors.ConfigError, match="unknown tasks"):
    SPEC.with_task_overrides({"click": {"weight": 1.0}})
  with pytest.raises(errors.ConfigError, match="valid kinds: binary, regression"):
    specs.TaskSpec("x", "ranking", "bce")
