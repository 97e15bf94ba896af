"""Tests for mtkd_jax.data.movielens.

The real-data tests read MovieLens 100K from ../shared/data/ml-100k (beside
the repository; its licence forbids copying it in) and skip when it is absent.
The error and regeneration tests write tiny fake files into tmp_path.
"""
import pathlib
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtkd_jax import errors
from mtkd_jax.data import movielens

DATA_DIR = (pathlib.Path(__file__).parents[2].parent / "shared" / "data" /
            "ml-100k")
SPLITS = ("train", "validation", "test")


def _cfg(data_dir, tfds_dir, max_examples=0, embed_dim=16):
  return types.SimpleNamespace(data_dir=str(data_dir), tfds_dir=str(tfds_dir),
                               max_examples=max_examples, embed_dim=embed_dim)


@pytest.fixture(scope="module")
def real(ml100k_tfds_dir):
  """(cfg, splits) of the real data, prepared once per test session."""
  cfg = _cfg(DATA_DIR, ml100k_tfds_dir)
  return cfg, movielens.load(cfg)


def _order_key(splits, split):
  """Per-row (user, timestamp, item) of a split, as separate arrays."""
  cols = splits.split(split)
  return (cols["user_id"], splits.extras[split]["timestamp"],
          cols["sparse"][:, 1])


# --- Real data. ---------------------------------------------------------------


def test_split_sizes_add_up(real):
  _, splits = real
  sizes = [len(splits.split(s)["user_id"]) for s in SPLITS]
  assert sum(sizes) == 100_000
  assert 0.78 < sizes[0] / 100_000 < 0.82
  assert all(0.09 < n / 100_000 < 0.11 for n in sizes[1:])


def test_spec(real):
  _, splits = real
  spec = splits.spec
  assert [f.name for f in spec.sparse] == list(movielens.SPARSE_FIELDS)
  vocab = {f.name: f.vocab_size for f in spec.sparse}
  assert vocab == {"user_id": 943, "item_id": 1682, "age_bucket": 7,
                   "gender": 2, "occupation": 21, "zip_prefix": 11,
                   "release_decade": 9}
  assert spec.dense == ()
  assert spec.task_names == ("rating", "like")
  assert spec.multi_hot[0].vocab_size == 19
  assert spec.multi_hot[0].max_len == movielens.GENRES_MAX_LEN
  assert spec.has_user_id


def test_per_user_chronology(real):
  """Per user, every train rating precedes every validation rating, which
  precedes every test rating, in (timestamp, item_id) order; timestamps alone
  are non-decreasing across the boundaries (ties may straddle them)."""
  _, splits = real
  big = np.int64(10_000)  # > any item index
  first, last = {}, {}
  for split in SPLITS:
    user, ts, item = _order_key(splits, split)
    key = ts * big + item
    n = 943
    first[split] = np.full(n, np.iinfo(np.int64).max)
    last[split] = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(first[split], user, key)
    np.maximum.at(last[split], user, key)
    # Every user (all have >= 20 ratings) appears in every split.
    assert len(np.unique(user)) == 943, split
  assert (last["train"] < first["validation"]).all()
  assert (last["validation"] < first["test"]).all()
  assert (last["train"] // big <= first["validation"] // big).all()
  assert (last["validation"] // big <= first["test"] // big).all()


def test_like_is_rating_at_least_4(real):
  _, splits = real
  for split in SPLITS:
    cols = splits.split(split)
    like = (cols["labels/rating"] >= 4).astype(np.float32)
    np.testing.assert_array_equal(cols["labels/like"], like)
    assert set(np.unique(cols["labels/rating"])) <= {1, 2, 3, 4, 5}


def test_columns_in_range(real):
  _, splits = real
  spec = splits.spec
  for split in SPLITS:
    cols = splits.split(split)
    sparse = cols["sparse"]
    assert sparse.dtype == np.int32 and sparse.min() >= 0
    assert (sparse.max(axis=0) < [f.vocab_size for f in spec.sparse]).all()
    genres = cols["multi_hot/genres"]
    assert genres.dtype == np.int32 and genres.min() >= -1 and genres.max() < 19
    assert (genres[:, 0] >= 0).all()  # every movie has a genre flag
    np.testing.assert_array_equal(cols["user_id"], sparse[:, 0])
    assert cols["dense"].shape == (len(sparse), 0)
    assert (cols["weights"] == 1).all()


def test_first_rating_features(real):
  """u.data line 1 is `196 242 3 881250949`: user 196 (49, M, writer, 55105)
  rates movie 242 (Kolya, 24-Jan-1997, Comedy)."""
  _, splits = real
  cols = splits.train
  # 1990s is the 8th decade of 1920..1990; writer is occupation 20 of 21.
  np.testing.assert_array_equal(cols["sparse"][0], [195, 241, 4, 0, 20, 5, 7])
  np.testing.assert_array_equal(cols["multi_hot/genres"][0],
                                [5, -1, -1, -1, -1, -1])
  assert cols["labels/rating"][0] == 3 and cols["labels/like"][0] == 0
  assert splits.extras["train"]["timestamp"][0] == 881250949


def test_second_load_comes_from_cache(real, monkeypatch):
  cfg, splits = real

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded TFDS examples instead of reading the cache")

  monkeypatch.setattr(movielens, "read_split", no_decoding)
  again = movielens.load(cfg)
  assert again.spec == splits.spec
  for split in SPLITS:
    a, b = splits.split(split), again.split(split)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
      assert a[k].dtype == b[k].dtype, k
    np.testing.assert_array_equal(splits.extras[split]["timestamp"],
                                  again.extras[split]["timestamp"])


def test_max_examples_keeps_the_first_rows(real):
  cfg, splits = real
  small = movielens.load(types.SimpleNamespace(**{**vars(cfg),
                                                  "max_examples": 800,
                                                  "embed_dim": 4}))
  assert small.spec.sparse[0].embed_dim == 4
  for split, n in zip(SPLITS, (800, 100, 100)):
    np.testing.assert_array_equal(small.split(split)["sparse"],
                                  splits.split(split)["sparse"][:n])


def test_love_is_rating_5_from_the_raw_file_and_the_same_cache(
    real, monkeypatch):
  """task_group="like_love": love == (rating == 5) row by row against u.data
  (rows keep u.data order within a split), love implies like, and the
  labels come from the columns the default task group cached."""
  cfg, splits = real

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded TFDS examples instead of reading the cache")

  monkeypatch.setattr(movielens, "read_split", no_decoding)
  funnel = movielens.load(types.SimpleNamespace(**{**vars(cfg),
                                                   "task_group": "like_love"}))
  assert funnel.spec.task_names == ("like", "love")
  assert [t.kind for t in funnel.spec.tasks] == ["binary", "binary"]
  raw = movielens.read_raw(DATA_DIR)["examples"]
  for k, split in enumerate(SPLITS):
    cols = funnel.split(split)
    rating = raw["rating"][raw["split"] == k]
    np.testing.assert_array_equal(cols["labels/love"], rating == 5)
    np.testing.assert_array_equal(cols["labels/like"], rating >= 4)
    assert cols["labels/love"].dtype == np.float32
    assert (cols["labels/love"] <= cols["labels/like"]).all()
    assert 0 < cols["labels/love"].sum() < cols["labels/like"].sum()
    assert "labels/rating" not in cols
    np.testing.assert_array_equal(cols["sparse"], splits.split(split)["sparse"])


def test_bad_task_group_options_fail_before_reading(tmp_path):
  cfg = _cfg(tmp_path / "absent", tmp_path / "tfds")
  with pytest.raises(errors.ConfigError, match="like_love"):
    movielens.load(types.SimpleNamespace(**{**vars(cfg),
                                            "task_group": "like_hate"}))
  with pytest.raises(errors.ConfigError, match="lacks"):
    movielens.load(types.SimpleNamespace(**{**vars(cfg),
                                            "task_group": "like_love",
                                            "rating_classes": True}))


# --- Fake data. ---------------------------------------------------------------


def _write_fake(root: pathlib.Path, ratings) -> pathlib.Path:
  """Writes u.user (4 users), u.item (3 movies) and u.data from `ratings`."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "u.user").write_text(
      "1|24|M|technician|85711\n2|53|F|other|94043\n"
      "3|17|M|writer|T8H1N\n4|60|F|other|15213\n", encoding="latin-1")
  flags = ["1" + "|0" * 18, "0|1|1" + "|0" * 16, "0" + "|0" * 18]
  (root / "u.item").write_text(
      f"1|A (1995)|01-Jan-1995||http://a|{flags[0]}\n"
      f"2|B (1977)|01-Jan-1977||http://b|{flags[1]}\n"
      f"3|unknown|||http://c|{flags[2]}\n", encoding="latin-1")
  (root / "u.data").write_text(
      "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings),
      encoding="latin-1")
  return root


def _fake_ratings(offset=0):
  """Each user rates the 3 movies, at times 100+, so 1/1/1 per split."""
  return [(u, i, 1 + (u + i) % 5, 100 + offset + 10 * u - i)
          for u in range(1, 5) for i in range(1, 4)]


def test_missing_files_error_names_them(tmp_path):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "u.data").write_text("1\t1\t5\t100\n")
  with pytest.raises(FileNotFoundError) as err:
    movielens.load(_cfg(tmp_path / "raw", tmp_path / "tfds"))
  msg = str(err.value)
  assert "u.user" in msg and "u.item" in msg and "missing u.data" not in msg
  assert str(tmp_path / "raw") in msg
  assert "--config.data.data_dir" in msg


def test_malformed_rating_line_names_file_and_line(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  lines = (raw / "u.data").read_text().splitlines()
  lines[2] = "3\tx\t4\t102"
  (raw / "u.data").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"u\.data:3: item id 'x' is not an"):
    movielens.load(_cfg(raw, tmp_path / "tfds"))


def test_wrong_field_count_names_file_and_line(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  with open(raw / "u.user", "a", encoding="latin-1") as f:
    f.write("5|30|M|other\n")
  with pytest.raises(ValueError, match=r"u\.user:5: expected 5 '\|'-sep"):
    movielens.read_raw(raw)


def test_unknown_user_names_line(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings() + [(9, 1, 5, 1)])
  with pytest.raises(ValueError, match=r"u\.data:13: user id 9 is not in"):
    movielens.read_raw(raw)


def test_fake_features_and_regeneration(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  cfg = _cfg(raw, tmp_path / "tfds")
  splits = movielens.load(cfg)
  vocab = {f.name: f.vocab_size for f in splits.spec.sparse}
  assert vocab["user_id"] == 4 and vocab["item_id"] == 3
  assert vocab["occupation"] == 3  # other, technician, writer
  assert vocab["release_decade"] == 3  # 1970, 1990, unknown
  # Each user's newest rating (item 1, as times fall with the item) is test.
  test = splits.test
  np.testing.assert_array_equal(test["user_id"], [0, 1, 2, 3])
  np.testing.assert_array_equal(
      test["sparse"],
      # user, item, age, gender, occupation, zip, decade
      [[0, 0, 1, 0, 1, 8, 1], [1, 0, 5, 1, 0, 9, 1],
       [2, 0, 0, 0, 2, 10, 1], [3, 0, 6, 1, 0, 1, 1]])
  np.testing.assert_array_equal(splits.train["sparse"][:, 6], [2] * 4)
  np.testing.assert_array_equal(splits.validation["multi_hot/genres"][0],
                                [1, 2, -1, -1, -1, -1])
  # Changed raw files under the same tfds_dir are re-prepared, not served
  # from the stale prepared data or column cache.
  np.testing.assert_array_equal(splits.extras["test"]["timestamp"],
                                [109, 119, 129, 139])
  _write_fake(raw, _fake_ratings(offset=1000))
  again = movielens.load(cfg)
  np.testing.assert_array_equal(again.extras["test"]["timestamp"],
                                [1109, 1119, 1129, 1139])


def test_without_data_dir_downloads_the_official_zip(tmp_path, monkeypatch):
  """No data_dir: the zip is fetched (faked here) and its ml-100k/ read."""
  extracted = tmp_path / "extracted"
  _write_fake(extracted / "ml-100k", _fake_ratings())
  urls = []

  def fake_download_and_extract(self, url):
    urls.append(url)
    return extracted

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      fake_download_and_extract)
  monkeypatch.setattr(movielens, "check_host_resolves", lambda url: None)
  splits = movielens.load(_cfg("", tmp_path / "tfds"))
  assert urls == [movielens.URL]
  assert len(splits.train["user_id"]) == 4


@pytest.mark.parametrize("n,expected", [
    (3, (1, 1, 1)), (4, (2, 1, 1)), (10, (8, 1, 1)), (20, (16, 2, 2)),
    (25, (20, 2, 3)), (29, (23, 3, 3)), (737, (589, 74, 74))])
def test_split_points(n, expected):
  val_start, test_start = movielens.split_points(np.array([n]))
  sizes = (int(val_start[0]), int(test_start[0] - val_start[0]),
           int(n - test_start[0]))
  assert sizes == expected


def test_split_users_small_users_go_to_train():
  user = np.array([0, 0, 1, 1, 1])
  ts = np.array([5, 1, 3, 2, 1])
  item = np.arange(5)
  np.testing.assert_array_equal(movielens.split_users(user, ts, item),
                                [0, 0, 2, 1, 0])


def test_rating_outside_1_to_5_names_file_and_line(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings() + [(1, 2, 99, 1)])
  with pytest.raises(errors.DataError,
                     match=r"u\.data:13: rating 99 is outside 1\.\.5"):
    movielens.read_raw(raw)


def test_failed_preparation_keeps_the_prepared_data(tmp_path):
  """Raw files that fail to parse do not remove the data prepared before."""
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  cfg = _cfg(raw, tmp_path / "tfds")
  first = movielens.load(cfg)
  prepared = sorted(p.name for p in (tmp_path / "tfds").rglob("*"))
  bad = _write_fake(tmp_path / "bad", _fake_ratings() + [(9, 1, 5, 1)])
  with pytest.raises(errors.DataError, match="user id 9 is not in u.user"):
    movielens.load(_cfg(bad, tmp_path / "tfds"))
  assert sorted(p.name for p in (tmp_path / "tfds").rglob("*")) == prepared
  again = movielens.load(cfg)  # served from the kept preparation
  np.testing.assert_array_equal(again.test["sparse"], first.test["sparse"])
