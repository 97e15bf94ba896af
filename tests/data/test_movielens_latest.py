"""Tests for mtkd_jax.data.movielens_latest.

The real-data tests read ../shared/data/ml-latest-small (beside the
repository; its licence forbids copying it in) and skip when it is absent.
The error tests write tiny fake files into tmp_path.
"""
import types

import numpy as np
import pytest

from configs import movielens_latest_mmoe
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.data import movielens_latest
from tests.conftest import REPO

DATA_DIR = REPO.parent / "shared" / "data" / "ml-latest-small"
SPLITS = ("train", "validation", "test")
NUM_RATINGS = 100_836


def _cfg(data_dir, cache_dir, **kw):
  return types.SimpleNamespace(data_dir=str(data_dir), cache_dir=str(cache_dir),
                               **kw)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("ml_latest_cache")


@pytest.fixture(scope="module")
def real(cache_dir):
  if not all((DATA_DIR / f).is_file()
             for f in movielens_latest.REQUIRED_FILES):
    pytest.skip(f"MovieLens latest-small not found at {DATA_DIR} (needs "
                f"{', '.join(movielens_latest.REQUIRED_FILES)}).")
  return movielens_latest.load(_cfg(DATA_DIR, cache_dir))


# --- Real data. ---------------------------------------------------------------


def test_split_sizes(real):
  sizes = [len(real.split(s)["user_id"]) for s in SPLITS]
  assert sizes == [80_419, 10_059, 10_358]
  assert sum(sizes) == NUM_RATINGS


def test_spec(real):
  spec = real.spec
  assert spec.name == "movielens_latest_small"
  assert {f.name: f.vocab_size for f in spec.sparse} == {
      "user_id": 610, "item_id": 9_742, "release_decade": 13,
      "years_since_release": 8}
  assert spec.dense == ()
  assert spec.task_names == ("rating", "like")
  assert spec.multi_hot[0].vocab_size == 20
  assert spec.multi_hot[0].max_len == 10
  assert spec.has_user_id


def test_per_user_chronology(real):
  """Per user, train < validation < test in (timestamp, item) order."""
  big = np.int64(100_000)  # > any item index
  first, last = {}, {}
  for split in SPLITS:
    cols = real.split(split)
    user = cols["user_id"]
    key = real.extras[split]["timestamp"] * big + cols["sparse"][:, 1]
    first[split] = np.full(610, np.iinfo(np.int64).max)
    last[split] = np.full(610, np.iinfo(np.int64).min)
    np.minimum.at(first[split], user, key)
    np.maximum.at(last[split], user, key)
    assert len(np.unique(user)) == 610, split  # all users have >= 20
  assert (last["train"] < first["validation"]).all()
  assert (last["validation"] < first["test"]).all()


def test_labels_and_ranges(real):
  spec = real.spec
  for split in SPLITS:
    cols = real.split(split)
    rating = cols["labels/rating"]
    assert rating.min() >= 0.5 and rating.max() <= 5
    np.testing.assert_array_equal(rating * 2, np.round(rating * 2))
    np.testing.assert_array_equal(cols["labels/like"],
                                  (rating >= 4).astype(np.float32))
    sparse = cols["sparse"]
    assert sparse.min() >= 0
    assert (sparse.max(axis=0) < [f.vocab_size for f in spec.sparse]).all()
    np.testing.assert_array_equal(cols["user_id"], sparse[:, 0])
    genres = cols["multi_hot/genres"]
    assert genres.min() >= -1 and genres.max() < 20
    assert (genres[:, 0] >= 0).all()  # '(no genres listed)' is a genre


def test_first_rating_features(real):
  """ratings.csv line 2 is `1,1,4.0,964982703`: user 1 rates Toy Story
  (1995), Adventure|Animation|Children|Comedy|Fantasy, in 2000."""
  cols = real.train
  # decade 1990 is index 9 of 1900..2010; 2000 - 1995 = 5 -> bucket 5-9 = 3.
  np.testing.assert_array_equal(cols["sparse"][0], [0, 0, 9, 3])
  np.testing.assert_array_equal(cols["multi_hot/genres"][0],
                                [2, 3, 4, 5, 9, -1, -1, -1, -1, -1])
  assert cols["labels/rating"][0] == 4 and cols["labels/like"][0] == 1
  assert real.extras["train"]["timestamp"][0] == 964982703


def test_second_load_comes_from_cache(real, cache_dir, monkeypatch):
  def no_parsing(*args, **kwargs):
    raise AssertionError("parsed the CSVs instead of reading the cache")

  monkeypatch.setattr(movielens_latest, "read_raw", no_parsing)
  small = movielens_latest.load(_cfg(DATA_DIR, cache_dir, max_examples=800))
  assert small.spec == real.spec
  for split, n in zip(SPLITS, (800, 100, 100)):
    for k, v in small.split(split).items():
      np.testing.assert_array_equal(v, real.split(split)[k][:n], err_msg=k)


def test_smoke_config_trains(real, cache_dir, tmp_path):
  config = movielens_latest_mmoe.get_config("smoke")
  config.data.data_dir = str(DATA_DIR)
  config.data.cache_dir = str(cache_dir)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["test"]["rating/rmse"] > 0
  assert 0 <= results["test"]["like/auc"] <= 1
  assert results["best_step"] > 0


# --- Fake data. ---------------------------------------------------------------


def _write_fake(root, ratings, movies=None):
  root.mkdir(parents=True, exist_ok=True)
  movies = movies or [
      '10,"Alpha, The (1995)",Comedy|Drama',
      "20,Beta,(no genres listed)",
      "5,Gamma (1968) ,Drama"]
  (root / "movies.csv").write_text("movieId,title,genres\n" +
                                   "\n".join(movies) + "\n")
  (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" +
                                    "".join(f"{r}\n" for r in ratings))
  return root


def _fake_ratings():
  """Users 1 and 2 rate the 3 movies; 1/1/1 per split each."""
  return [f"{u},{m},{(u + m) % 10 / 2 + 0.5},{1_000_000_000 + 100 * u + k}"
          for u in (1, 2) for k, m in enumerate((10, 20, 5))]


def test_fake_features(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  splits = movielens_latest.load(_cfg(raw, tmp_path / "cache"))
  vocab = {f.name: f.vocab_size for f in splits.spec.sparse}
  assert vocab == {"user_id": 2, "item_id": 3, "release_decade": 3,
                   "years_since_release": 8}
  # Genres sorted: (no genres listed), Comedy, Drama.
  assert splits.spec.multi_hot[0].vocab_size == 3
  # movieId 5 -> item 0, 10 -> 1, 20 -> 2; decades 1960 -> 0, 1990 -> 1.
  # Ratings in 2001: Alpha (1995) is 6 years old (bucket 3), Gamma (1968)
  # 33 (bucket 5), Beta has no year (decade 2 = unknown, bucket 7).
  np.testing.assert_array_equal(splits.train["sparse"],
                                [[0, 1, 1, 3], [1, 1, 1, 3]])
  np.testing.assert_array_equal(splits.validation["sparse"],
                                [[0, 2, 2, 7], [1, 2, 2, 7]])
  np.testing.assert_array_equal(splits.test["sparse"],
                                [[0, 0, 0, 5], [1, 0, 0, 5]])
  np.testing.assert_array_equal(splits.train["multi_hot/genres"][0][:3],
                                [1, 2, -1])
  np.testing.assert_array_equal(splits.validation["multi_hot/genres"][0][:2],
                                [0, -1])


def test_missing_files_name_dir_files_and_flag(tmp_path):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "ratings.csv").write_text("userId\n")
  with pytest.raises(errors.MissingDataError) as err:
    movielens_latest.load(_cfg(tmp_path / "raw", tmp_path / "cache"))
  msg = str(err.value)
  assert str(tmp_path / "raw") in msg and "missing movies.csv" in msg
  assert "--config.data.data_dir" in msg
  with pytest.raises(errors.MissingDataError, match="needs data.data_dir"):
    movielens_latest.load(_cfg("", tmp_path / "cache"))


@pytest.mark.parametrize("bad,pattern", [
    ("1,99,4.0,1000", r"ratings\.csv:4: field 'movieId' value 99 is not in "
                      r"movies\.csv"),
    ("1,10,7.0,1000", r"ratings\.csv:4: field 'rating' value 7\.0 is "
                      r"outside"),
    ("1,10,4.0,soon", r"ratings\.csv:4: field 'timestamp' value 'soon' is "
                      r"not an integer"),
    ("1,10,4.0", r"ratings\.csv:4: expected 4 fields, got 3"),
])
def test_malformed_rating_names_file_line_and_field(tmp_path, bad, pattern):
  ratings = _fake_ratings()
  ratings[2] = bad
  raw = _write_fake(tmp_path / "raw", ratings)
  with pytest.raises(errors.DataError, match=pattern):
    movielens_latest.load(_cfg(raw, tmp_path / "cache"))


def test_duplicate_movie_is_named(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings(),
                    movies=["10,A (1995),Comedy", "10,B (1996),Drama"])
  with pytest.raises(errors.DataError,
                     match=r"movies\.csv:3: field 'movieId' 10 appears twice"):
    movielens_latest.load(_cfg(raw, tmp_path / "cache"))
