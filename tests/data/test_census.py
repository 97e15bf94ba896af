"""Tests for mtkd_jax.data.census.

The real-data tests read census-income.test.gz from
../shared/data/census-income-kdd (beside the repository, never copied in)
and skip when it is absent. The error and official-split tests write small
synthetic files into tmp_path.
"""
import gzip
import pathlib
import types

import numpy as np
import pytest

from configs import census_mmoe
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.data import census
from tests.conftest import REPO

DATA_DIR = REPO.parent / "shared" / "data" / "census-income-kdd"
SPLITS = ("train", "validation", "test")
NUM_ROWS = 99_762


def _cfg(data_dir, cache_dir, **kw):
  return types.SimpleNamespace(data_dir=str(data_dir), cache_dir=str(cache_dir),
                               **kw)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("census_cache")


@pytest.fixture(scope="module")
def real(cache_dir):
  """Splits of the real test file (single-file mode), parsed once."""
  if not (DATA_DIR / "census-income.test.gz").is_file():
    pytest.skip(f"Census-Income not found at {DATA_DIR} (needs "
                "census-income.test.gz; UCI data, not in the repository).")
  return census.load(_cfg(DATA_DIR, cache_dir))


def _all(splits, key):
  return np.concatenate([
      splits.split(s)[key] if key in splits.split(s) else
      splits.extras[s][key] for s in SPLITS])


# --- Real data. ---------------------------------------------------------------


def test_single_file_split_sizes_and_strata(real):
  sizes = [len(real.split(s)["weights"]) for s in SPLITS]
  assert sizes == [59_857, 19_953, 19_952]
  assert sum(sizes) == NUM_ROWS
  for key in ("labels/income", "labels/marital", "labels/education"):
    overall = _all(real, key).mean()
    for s in SPLITS:
      cols = {**real.split(s), **real.extras[s]}
      assert abs(cols[key].mean() - overall) < 1e-3, (key, s)
  # Counts from SOURCE.md: 6,186 incomes over 50K, 43,143 never married.
  assert _all(real, "labels/income").sum() == 6_186
  assert _all(real, "labels/marital").sum() == 43_143


def test_education_definition_reproduces_paper_correlation(real):
  """The paper: |Pearson(at least college, never married)| = 0.2373 and
  |Pearson(income, never married)| = 0.1768 over 10,000 random rows."""
  marital = _all(real, "labels/marital")
  edu = _all(real, "labels/education")
  income = _all(real, "labels/income")
  assert abs(abs(np.corrcoef(edu, marital)[0, 1]) - 0.2373) < 0.002
  assert abs(abs(np.corrcoef(income, marital)[0, 1]) - 0.1768) < 0.005


def test_spec_and_inputs(real):
  spec = real.spec
  names = [f.name for f in spec.sparse]
  assert names == list(census.SPARSE_COLUMNS) and len(names) == 31
  assert [f.name for f in spec.dense] == list(census.DENSE_COLUMNS)
  for label in ("education", "marital_stat", "income_50k", "instance_weight"):
    assert label not in names
  assert spec.task_names == ("income", "marital")
  assert all(t.kind == "binary" and t.loss == "bce" for t in spec.tasks)
  assert {f.name: f.vocab_size for f in spec.sparse}["sex"] == 3  # OOV + 2
  for s in SPLITS:
    cols = real.split(s)
    assert cols["sparse"].dtype == np.int32 and cols["sparse"].min() >= 0
    assert (cols["sparse"].max(axis=0) <
            [f.vocab_size for f in spec.sparse]).all()
    assert set(cols) == {"sparse", "dense", "labels/income", "labels/marital",
                         "weights"}
    assert (cols["weights"] == 1).all()
    assert set(real.extras[s]) == {"instance_weight", "labels/education"}


def test_vocab_and_dense_stats_from_train_only(real):
  train = real.train
  # Train ids other than OOV occur >= min_count (5) times in train.
  for j in range(train["sparse"].shape[1]):
    counts = np.bincount(train["sparse"][:, j])
    assert (counts[1:] >= 5).all()
  np.testing.assert_allclose(train["dense"].mean(axis=0), 0, atol=1e-4)
  np.testing.assert_allclose(train["dense"].std(axis=0), 1, atol=1e-3)
  assert not np.allclose(real.test["dense"].mean(axis=0), 0, atol=1e-4)


def test_education_group_and_instance_weights(real, cache_dir):
  group2 = census.load(_cfg(DATA_DIR, cache_dir,
                            task_group="education_marital"))
  assert group2.spec.task_names == ("education", "marital")
  np.testing.assert_array_equal(group2.train["sparse"], real.train["sparse"])
  np.testing.assert_array_equal(group2.train["labels/education"],
                                real.extras["train"]["labels/education"])
  assert "labels/income" in group2.extras["test"]
  weighted = census.load(_cfg(DATA_DIR, cache_dir, use_instance_weight=True))
  w = weighted.train["weights"]
  assert abs(w.mean() - 1) < 1e-4 and w.std() > 0.1
  assert (weighted.validation["weights"] == 1).all()
  np.testing.assert_allclose(w, real.extras["train"]["instance_weight"] /
                             real.extras["train"]["instance_weight"].mean(),
                             rtol=1e-5)


def test_second_load_comes_from_cache(real, cache_dir, monkeypatch):
  def no_parsing(*args, **kwargs):
    raise AssertionError("parsed the raw file instead of reading the cache")

  monkeypatch.setattr(census, "parse_file", no_parsing)
  again = census.load(_cfg(DATA_DIR, cache_dir))
  assert again.spec == real.spec
  for s in SPLITS:
    for k, v in real.split(s).items():
      np.testing.assert_array_equal(again.split(s)[k], v, err_msg=k)
  small = census.load(_cfg(DATA_DIR, cache_dir, max_examples=400,
                           embed_dim=4))
  assert small.spec.sparse[0].embed_dim == 4
  for s, n in zip(SPLITS, (400, 100, 100)):
    np.testing.assert_array_equal(small.split(s)["sparse"],
                                  real.split(s)["sparse"][:n])


def test_smoke_config_trains(real, cache_dir, tmp_path):
  config = census_mmoe.get_config("smoke")
  config.data.data_dir = str(DATA_DIR)
  config.data.cache_dir = str(cache_dir)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert 0 <= results["test"]["income/auc"] <= 1
  assert 0 <= results["test"]["marital/auc"] <= 1
  assert results["best_step"] > 0


# --- Synthetic files. ---------------------------------------------------------


def _line(i: int) -> str:
  """A well-formed synthetic line; labels and values vary with i."""
  fields = {c: "x" for c in census.COLUMNS}
  fields.update(age=str(20 + i % 50), wage_per_hour=str(i % 7 * 100),
                capital_gains="0", capital_losses="0",
                stock_dividends=str(i % 3), num_emp=str(i % 6),
                weeks_worked=str(i % 53), instance_weight=str(1000 + i),
                year=str(94 + i % 2), sex=("Male", "Female")[i % 2],
                education=census.EDUCATION_VALUES[i % 17],
                marital_stat=("Never married", "Divorced")[i // 3 % 2],
                income_50k=("- 50000.", "50000+.")[i // 5 % 2])
  return ", ".join(fields[c] for c in census.COLUMNS)


def _write(path: pathlib.Path, lines) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(f"{line}\n" for line in lines)
  if path.suffix == ".gz":
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def test_missing_dir_names_dir_files_and_flag(tmp_path):
  with pytest.raises(errors.MissingDataError) as err:
    census.load(_cfg(tmp_path / "nope", tmp_path / "cache"))
  msg = str(err.value)
  assert str(tmp_path / "nope") in msg and "does not exist" in msg
  assert "census-income.test" in msg and "--config.data.data_dir" in msg
  with pytest.raises(errors.MissingDataError, match="needs data.data_dir"):
    census.load(_cfg("", tmp_path / "cache"))
  _write(tmp_path / "raw" / "census-income.test.gz", [_line(0)])
  with pytest.raises(errors.MissingDataError, match=r"missing census-income"
                     r"\.data\(\.gz\)"):
    census.load(_cfg(tmp_path / "raw", tmp_path / "cache",
                     split_mode="official"))


@pytest.mark.parametrize("bad,pattern", [
    ("1, 2, 3", r"census-income\.test\.gz:3: expected 42 comma-separated "
                r"fields, got 3"),
    (_line(2).replace("- 50000.", "maybe"),
     r"census-income\.test\.gz:3: field 'income_50k' \(column 42\) value "
     r"'maybe'"),
    ("abc" + _line(2)[2:], r"census-income\.test\.gz:3: field 'age' "
                           r"\(column 1\) value 'abc' is not a number"),
    (_line(2).replace("1st 2nd 3rd or 4th grade", "Kindergarten"),
     r":3: field 'education' \(column 5\) value 'Kindergarten'"),
])
def test_malformed_line_names_file_line_and_field(tmp_path, bad, pattern):
  lines = [_line(i) for i in range(5)]
  lines[2] = bad
  raw = tmp_path / "raw"
  _write(raw / "census-income.test.gz", lines)
  with pytest.raises(errors.DataError, match=pattern):
    census.load(_cfg(raw, tmp_path / "cache"))


def test_official_split_and_oov(tmp_path):
  raw = tmp_path / "raw"
  _write(raw / "census-income.data", [_line(i) for i in range(60)])
  test_lines = [_line(i) for i in range(40)]
  test_lines[0] = test_lines[0].replace("Male", "Unknown-sex")
  _write(raw / "census-income.test.gz", test_lines)
  splits = census.load(_cfg(raw, tmp_path / "cache", min_count=1))
  assert len(splits.train["weights"]) == 60  # the whole train file
  sizes = [len(splits.split(s)["weights"]) for s in SPLITS[1:]]
  assert sum(sizes) == 40 and abs(sizes[0] - sizes[1]) <= 4
  sex = census.SPARSE_COLUMNS.index("sex")
  assert splits.spec.sparse[sex].vocab_size == 3
  # The unseen value gets the OOV id 0 wherever it landed.
  both = np.concatenate([splits.validation["sparse"][:, sex],
                         splits.test["sparse"][:, sex]])
  assert (both == 0).sum() == 1 and (splits.train["sparse"][:, sex] > 0).all()
  # single_file mode ignores the train file: 60/20/20 of the 40 test rows.
  single = census.load(_cfg(raw, tmp_path / "cache", min_count=1,
                            split_mode="single_file"))
  assert sum(len(single.split(s)["weights"]) for s in SPLITS) == 40


def test_stratified_split_is_seeded_and_stratified():
  stratum = np.repeat(np.arange(4), [100, 50, 30, 20])
  a = census.stratified_split(stratum, (0.6, 0.2, 0.2), seed=1)
  b = census.stratified_split(stratum, (0.6, 0.2, 0.2), seed=1)
  c = census.stratified_split(stratum, (0.6, 0.2, 0.2), seed=2)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  for s in range(4):
    counts = np.bincount(a[stratum == s], minlength=3)
    n = (stratum == s).sum()
    np.testing.assert_array_equal(counts, [round(0.6 * n), round(0.8 * n) -
                                           round(0.6 * n),
                                           n - round(0.8 * n)])
  with pytest.raises(errors.ConfigError):
    census.stratified_split(stratum, (0.6, 0.2), seed=0)


def test_bad_options_are_config_errors(tmp_path):
  _write(tmp_path / "raw" / "census-income.test.gz", [_line(0)])
  with pytest.raises(errors.ConfigError, match="task_group"):
    census.load(_cfg(tmp_path / "raw", tmp_path, task_group="income"))
  with pytest.raises(errors.ConfigError, match="split_mode"):
    census.load(_cfg(tmp_path / "raw", tmp_path, split_mode="random"))
