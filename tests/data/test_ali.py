"""Tests for mtkd_jax.data.ali (Ali-CCP and AliExpress).

The format tests read torch-rechub's sample CSVs from
../shared/data/samples/torch-rechub (beside the repository, never copied in)
and skip when they are absent. The error tests write small synthetic CSVs
into tmp_path.
"""
import csv
import types

import numpy as np
import pytest

from configs import aliccp_mmoe
from configs import aliexpress_mmoe
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.data import ali
from tests.conftest import REPO

SAMPLES = REPO.parent / "shared" / "data" / "samples" / "torch-rechub"
ALICCP_DIR = SAMPLES / "ali-ccp"
ALIEXPRESS_DIR = SAMPLES / "aliexpress"
SPLITS = ("train", "validation", "test")


def _cfg(data_dir, cache_dir, **kw):
  return types.SimpleNamespace(data_dir=str(data_dir), cache_dir=str(cache_dir),
                               **kw)


def _need(path, names):
  if not all((path / n).is_file() for n in names):
    pytest.skip(f"torch-rechub samples not found in {path} (needs "
                f"{', '.join(names)}; licensed data, not in the repository).")
  return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("ali_cache")


@pytest.fixture(scope="module")
def aliccp(cache_dir):
  _need(ALICCP_DIR, ali.ALICCP_FILES[1])
  return ali.load_aliccp(_cfg(ALICCP_DIR, cache_dir))


@pytest.fixture(scope="module")
def aliexpress(cache_dir):
  _need(ALIEXPRESS_DIR, ali.ALIEXPRESS_FILES[1])
  return ali.load_aliexpress(_cfg(ALIEXPRESS_DIR, cache_dir))


def _read(path):
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  return rows[0], np.asarray(rows[1:], dtype=np.float64)


def _check_ids(splits):
  vocab = [f.vocab_size for f in splits.spec.sparse]
  top = np.zeros(len(vocab), np.int64)
  for s in SPLITS:
    sparse = splits.split(s)["sparse"]
    assert sparse.dtype == np.int32 and sparse.min() >= 0
    assert (sparse.max(axis=0) < vocab).all()
    top = np.maximum(top, sparse.max(axis=0))
  np.testing.assert_array_equal(top + 1, vocab)  # vocab = largest id + 1


# --- Samples. -----------------------------------------------------------------


def test_aliccp_sample_loads(aliccp):
  spec = aliccp.spec
  assert [f.name for f in spec.sparse] == list(ali.ALICCP_SPARSE)
  assert [f.name for f in spec.dense] == list(ali.ALICCP_DENSE)
  assert len(spec.sparse) == 23 and len(spec.dense) == 8
  assert spec.task_names == ("ctr", "ctcvr")
  assert all(t.kind == "binary" for t in spec.tasks)
  _check_ids(aliccp)
  for s, name in zip(SPLITS, ali.ALICCP_FILES[1]):
    header, raw = _read(ALICCP_DIR / name)
    cols = aliccp.split(s)
    assert len(cols["weights"]) == len(raw)
    click, purchase = raw[:, 0], raw[:, 1]
    # Purchase implies click in the samples, so ctcvr is the purchase column.
    assert not ((purchase == 1) & (click == 0)).any()
    np.testing.assert_array_equal(cols["labels/ctr"], click)
    np.testing.assert_array_equal(cols["labels/ctcvr"], purchase)
    assert (cols["labels/ctcvr"] <= cols["labels/ctr"]).all()
    np.testing.assert_array_equal(cols["sparse"], raw[:, 2:25])
    np.testing.assert_allclose(cols["dense"], raw[:, 25:], rtol=1e-6)
    assert header[25:] == list(ali.ALICCP_DENSE)
  assert [len(aliccp.split(s)["weights"]) for s in SPLITS] == [100, 50, 50]
  assert aliccp.train["labels/ctr"].sum() == 7
  assert aliccp.train["labels/ctcvr"].sum() == 1


def test_aliexpress_sample_loads(aliexpress):
  spec = aliexpress.spec
  assert [f.name for f in spec.sparse] == list(ali.ALIEXPRESS_SPARSE)
  assert [f.name for f in spec.dense] == list(ali.ALIEXPRESS_DENSE)
  assert spec.task_names == ("ctr", "ctcvr")
  _check_ids(aliexpress)
  _, train_raw = _read(ALIEXPRESS_DIR / ali.ALIEXPRESS_FILES[1][0])
  _, test_raw = _read(ALIEXPRESS_DIR / ali.ALIEXPRESS_FILES[1][1])
  for raw in (train_raw, test_raw):
    assert not ((raw[:, -1] == 1) & (raw[:, -2] == 0)).any()
  n_train = len(aliexpress.train["weights"])
  n_val = len(aliexpress.validation["weights"])
  assert n_train + n_val == len(train_raw) == 100 and n_val > 0
  np.testing.assert_array_equal(aliexpress.test["labels/ctr"], test_raw[:, -2])
  np.testing.assert_array_equal(aliexpress.test["labels/ctcvr"],
                                test_raw[:, -1])
  np.testing.assert_array_equal(aliexpress.test["sparse"], test_raw[:, 1:17])
  # Validation holds whole search ids, none shared with train.
  train_ids = set(aliexpress.extras["train"]["search_id"].tolist())
  val_ids = set(aliexpress.extras["validation"]["search_id"].tolist())
  assert val_ids and not train_ids & val_ids
  assert len(val_ids) == round(0.1 * len(set(train_raw[:, 0].tolist())))


def test_aliexpress_split_seed_changes_validation(aliexpress, cache_dir):
  again = ali.load_aliexpress(_cfg(ALIEXPRESS_DIR, cache_dir, split_seed=1))
  assert (set(again.extras["validation"]["search_id"].tolist()) !=
          set(aliexpress.extras["validation"]["search_id"].tolist()))


def test_second_load_comes_from_cache(aliccp, cache_dir, monkeypatch):
  def no_parsing(*args, **kwargs):
    raise AssertionError("parsed the CSVs instead of reading the cache")

  monkeypatch.setattr(ali, "read_csv", no_parsing)
  again = ali.load_aliccp(_cfg(ALICCP_DIR, cache_dir, max_examples=40))
  assert again.spec == aliccp.spec
  for s, n in zip(SPLITS, (40, 10, 10)):
    for k, v in again.split(s).items():
      np.testing.assert_array_equal(v, aliccp.split(s)[k][:n], err_msg=k)


@pytest.mark.parametrize("module,data_dir,files", [
    (aliccp_mmoe, ALICCP_DIR, ali.ALICCP_FILES[1]),
    (aliexpress_mmoe, ALIEXPRESS_DIR, ali.ALIEXPRESS_FILES[1])],
                         ids=["aliccp", "aliexpress"])
def test_smoke_config_trains(module, data_dir, files, cache_dir, tmp_path):
  config = module.get_config("smoke")
  config.data.data_dir = str(_need(data_dir, files))
  config.data.cache_dir = str(cache_dir)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert 0 <= results["test"]["ctcvr/auc"] <= 1
  assert results["best_step"] > 0


# --- Synthetic files. ---------------------------------------------------------


def _aliccp_row(i: int, click=None, purchase=None) -> str:
  click = i % 3 == 0 if click is None else click
  purchase = (i % 6 == 0) if purchase is None else purchase
  ids = [str((i * (j + 1)) % 7) for j in range(23)]
  dense = [f"{(i * (j + 3)) % 10 / 10}" for j in range(8)]
  return ",".join([str(int(click)), str(int(purchase))] + ids + dense)


def _with_field(row: str, j: int, value: str) -> str:
  fields = row.split(",")
  fields[j] = value
  return ",".join(fields)


def _write_aliccp(root, rows_per_split=12, edit=None):
  """Writes ali_ccp_{train,val,test}.csv; `edit(split, lines)` may alter."""
  root.mkdir(parents=True, exist_ok=True)
  header = ",".join(ali.ALICCP_SCHEMA.header)
  for split, name in zip(SPLITS, ali.ALICCP_FILES[0]):
    lines = [header] + [_aliccp_row(i) for i in range(rows_per_split)]
    if edit:
      edit(split, lines)
    (root / name).write_text("\n".join(lines) + "\n")
  return root


def test_synthetic_aliccp_matches_rows(tmp_path):
  raw = _write_aliccp(tmp_path / "raw")
  splits = ali.load_aliccp(_cfg(raw, tmp_path / "cache"))
  assert [len(splits.split(s)["weights"]) for s in SPLITS] == [12] * 3
  np.testing.assert_array_equal(splits.train["labels/ctr"],
                                [float(i % 3 == 0) for i in range(12)])
  np.testing.assert_array_equal(splits.train["labels/ctcvr"],
                                [float(i % 6 == 0) for i in range(12)])
  expected = [max((i * (j + 1)) % 7 for i in range(12)) + 1
              for j in range(23)]
  assert [f.vocab_size for f in splits.spec.sparse] == expected
  np.testing.assert_allclose(splits.test["dense"][3],
                             [(3 * (j + 3)) % 10 / 10 for j in range(8)])


def test_chunked_parsing_keeps_line_numbers(tmp_path, monkeypatch):
  monkeypatch.setattr(ali, "CHUNK_LINES", 5)

  def edit(split, lines):
    if split == "validation":
      lines[10] = lines[10].replace(",", ",oops,", 1)

  raw = _write_aliccp(tmp_path / "raw", edit=edit)
  with pytest.raises(errors.DataError,
                     match=r"ali_ccp_val\.csv:11: expected 33 comma-separated "
                           r"fields, got 34"):
    ali.load_aliccp(_cfg(raw, tmp_path / "cache"))
  raw = _write_aliccp(tmp_path / "raw2")
  splits = ali.load_aliccp(_cfg(raw, tmp_path / "cache"))
  assert len(splits.test["weights"]) == 12  # 3 chunks of <= 5 lines


@pytest.mark.parametrize("line,pattern", [
    (lambda: _aliccp_row(4, click=0, purchase=1),
     r"ali_ccp_test\.csv:5: field 'purchase' is 1 but field 'click' is '0'"),
    (lambda: _with_field(_aliccp_row(4), 3, "x"),
     r"ali_ccp_test\.csv:5: field '121' value 'x' is not a number"),
    (lambda: _with_field(_aliccp_row(4), 32, "nan"),
     r"ali_ccp_test\.csv:5: field 'D853' value 'nan' is not finite"),
    (lambda: _aliccp_row(4, click=2),
     r"ali_ccp_test\.csv:5: field 'click' value '2' is not 0 or 1"),
    (lambda: _with_field(_aliccp_row(4), 2, "-1"),
     r"ali_ccp_test\.csv:5: field '101' value '-1' is not an integer id"),
    (lambda: _with_field(_aliccp_row(4), 2, "1.5"),
     r"ali_ccp_test\.csv:5: field '101' value '1.5' is not an integer id"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, line, pattern):
  def edit(split, lines):
    if split == "test":
      lines[4] = line()

  raw = _write_aliccp(tmp_path / "raw", edit=edit)
  with pytest.raises(errors.DataError, match=pattern):
    ali.load_aliccp(_cfg(raw, tmp_path / "cache"))


def test_wrong_header_is_named(tmp_path):
  def edit(split, lines):
    if split == "train":
      lines[0] = lines[0].replace("purchase", "conversion")

  raw = _write_aliccp(tmp_path / "raw", edit=edit)
  with pytest.raises(errors.DataError,
                     match=r"ali_ccp_train\.csv:1: unexpected header: column 2 "
                           r"is 'conversion', expected 'purchase'"):
    ali.load_aliccp(_cfg(raw, tmp_path / "cache"))


def test_missing_files_name_dir_files_and_flag(tmp_path):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "ali_ccp_train.csv").write_text("click\n")
  with pytest.raises(errors.MissingDataError) as err:
    ali.load_aliccp(_cfg(tmp_path / "raw", tmp_path / "cache"))
  msg = str(err.value)
  assert str(tmp_path / "raw") in msg
  assert "missing ali_ccp_val.csv, ali_ccp_test.csv" in msg
  assert "ali_ccp_train_sample.csv" in msg and "--config.data.data_dir" in msg
  with pytest.raises(errors.MissingDataError) as err:
    ali.load_aliexpress(_cfg(tmp_path / "nope", tmp_path / "cache"))
  msg = str(err.value)
  assert "does not exist" in msg and "train.csv, test.csv" in msg
  assert "--config.data.data_dir" in msg
  for loader in (ali.load_aliccp, ali.load_aliexpress):
    with pytest.raises(errors.MissingDataError, match="needs data.data_dir"):
      loader(_cfg("", tmp_path / "cache"))


def test_group_holdout():
  groups = np.array([5, 5, 7, 9, 9, 9, 11, 12, 13, 14])
  held = ali.group_holdout(groups, 0.3, seed=0)
  assert len(np.unique(groups[held])) == 2  # round(0.3 * 7)
  assert not set(groups[held]) & set(groups[~held])
  np.testing.assert_array_equal(held, ali.group_holdout(groups, 0.3, seed=0))
  with pytest.raises(errors.DataError, match="distinct search_id"):
    ali.group_holdout(np.array([3, 3]), 0.1, seed=0)
  with pytest.raises(errors.ConfigError, match="val_fraction"):
    ali.group_holdout(groups, 1.0, seed=0)
