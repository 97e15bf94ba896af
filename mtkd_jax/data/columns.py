"""Checks that a split's numpy columns match its `DatasetSpec`.

Bad data stops here, before training, with a message naming the split, the
field and the first offending row, rather than as a silent out-of-range gather
(XLA clamps or fills out-of-bounds indices without complaint).
"""
import numpy as np

from mtkd_jax import errors

from mtkd_jax.data import specs as specs_lib


def num_rows(columns: dict) -> int:
  return len(next(iter(columns.values())))


def _first_bad_row(bad: np.ndarray) -> int:
  return int(np.argwhere(bad)[0][0])


def _check_ids(ids, vocab_size, field, split, allow_padding):
  ids = np.asarray(ids)
  low = -1 if allow_padding else 0
  bad = (ids < low) | (ids >= vocab_size)
  if bad.any():
    row = _first_bad_row(bad)
    raise errors.DataError(
        f"{split}: field {field!r} row {row} has id {ids[row].tolist()} outside "
        f"[0, {vocab_size}) (its vocab_size in the spec). Fix the data or raise "
        "the field's vocab_size.")


def validate_columns(spec: specs_lib.DatasetSpec, columns: dict,
                     split: str = "data") -> None:
  """Raises DataError naming the split, field and row of the first problem."""
  n = num_rows(columns)
  expected = {"sparse", "dense", "weights"} | {
      f"labels/{t}" for t in spec.task_names} | {
          f"multi_hot/{m.name}" for m in spec.multi_hot} | {
              f"sequence/{s.name}" for s in spec.sequences}
  if spec.has_user_id:
    expected.add("user_id")
  missing = expected - set(columns)
  if missing:
    raise errors.DataError(f"{split}: missing columns {sorted(missing)}; "
                     f"has {sorted(columns)}.")
  for key, col in columns.items():
    if len(col) != n:
      raise errors.DataError(f"{split}: column {key!r} has {len(col)} rows, "
                       f"expected {n} like the others.")
  sparse = np.asarray(columns["sparse"])
  if sparse.shape[1:] != (len(spec.sparse),) or sparse.dtype.kind not in "iu":
    raise errors.DataError(f"{split}: 'sparse' must be int[N, {len(spec.sparse)}], "
                     f"got {sparse.dtype}{list(sparse.shape)}.")
  for j, field in enumerate(spec.sparse):
    _check_ids(sparse[:, j], field.vocab_size, field.name, split, False)
  for field in spec.multi_hot:
    col = np.asarray(columns[f"multi_hot/{field.name}"])
    if col.shape[1:] != (field.max_len,):
      raise errors.DataError(f"{split}: multi-hot field {field.name!r} must be "
                       f"int[N, {field.max_len}], got {list(col.shape)}.")
    _check_ids(col, field.vocab_size, field.name, split, True)
  for field in spec.sequences:
    col = np.asarray(columns[f"sequence/{field.name}"])
    if col.shape[1:] != (field.max_len,) or col.dtype.kind not in "iu":
      raise errors.DataError(f"{split}: sequence field {field.name!r} must be "
                             f"int[N, {field.max_len}], got "
                             f"{col.dtype}{list(col.shape)}.")
    _check_ids(col, field.vocab_size, field.name, split, True)
  dense = np.asarray(columns["dense"])
  if dense.shape[1:] != (len(spec.dense),):
    raise errors.DataError(f"{split}: 'dense' must be float[N, {len(spec.dense)}], "
                     f"got {list(dense.shape)}.")
  for key in ["dense"] + [f"labels/{t}" for t in spec.task_names]:
    col = np.asarray(columns[key], dtype=np.float64)
    bad = ~np.isfinite(col)
    if bad.any():
      row = _first_bad_row(bad)
      raise errors.DataError(f"{split}: column {key!r} row {row} is not finite.")
  for task in spec.tasks:
    if task.kind == "binary":
      y = np.asarray(columns[f"labels/{task.name}"])
      bad = (y != 0) & (y != 1)
      if bad.any():
        row = _first_bad_row(bad)
        raise errors.DataError(f"{split}: binary task {task.name!r} row {row} has "
                         f"label {y[row]}, expected 0 or 1.")
    if task.label_range:
      low, high = task.label_range
      y = np.asarray(columns[f"labels/{task.name}"], dtype=np.float64)
      bad = (y < low) | (y > high)
      if bad.any():
        row = _first_bad_row(bad)
        raise errors.DataError(
            f"{split}: regression task {task.name!r} row {row} has label "
            f"{y[row]}, outside its declared range [{low:g}, {high:g}].")
    if task.kind == "multiclass":
      y = np.asarray(columns[f"labels/{task.name}"], dtype=np.float64)
      bad = (y != np.round(y)) | (y < 0) | (y >= task.num_classes)
      if bad.any():
        row = _first_bad_row(bad)
        raise errors.DataError(
            f"{split}: multiclass task {task.name!r} row {row} has label "
            f"{y[row]}, expected an integer class id in "
            f"[0, {task.num_classes}).")
