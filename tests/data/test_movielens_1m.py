"""Tests for mtkd_jax.data.movielens_1m.

MovieLens-1M's licence forbids copying it into the repository and it is not
needed here: every test writes a small fake ml-1m folder in the GroupLens
format ('::'-separated, latin-1) into tmp_path, and checks the parsing, the
split rules (those of ML-100K), the errors on bad rows (file and line named),
the TFDS preparation and cache, the download path and a short training run
through the dataset registry.
"""
import pathlib
import socket
import types
import urllib.request

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import movielens_1m_mmoe
from mtkd_jax import data as data_lib
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.data import movielens
from mtkd_jax.data import movielens_1m

SPLITS = ("train", "validation", "test")
USERS = ("1::F::1::10::48067", "2::M::56::16::70072",
         "3::M::25::15::T8H1N", "4::F::45::7::02460")
# Movie 2 is a gap, as ML-1M's ids have; 4 has a latin-1 title; 6 no year.
MOVIES = ("1::Toy Story (1995)::Animation|Children's|Comedy",
          "3::Grumpier Old Men (1995)::Comedy|Romance",
          "4::Cit\xe9 des enfants perdus, La (1995)::Adventure|Sci-Fi",
          "5::Metropolis (1927)::Sci-Fi",
          "6::Untitled::Drama")
T0 = 978_300_000


def _cfg(data_dir, tfds_dir, **kw):
  return types.SimpleNamespace(data_dir=str(data_dir), tfds_dir=str(tfds_dir),
                               **kw)


def _write_fake(root: pathlib.Path, ratings, users=USERS,
                movies=MOVIES) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  for name, lines in (("users.dat", users), ("movies.dat", movies),
                      ("ratings.dat", [f"{u}::{m}::{r}::{t}"
                                       for u, m, r, t in ratings])):
    (root / name).write_text("".join(f"{line}\n" for line in lines),
                             encoding="latin-1")
  return root


def _fake_ratings(offset=0):
  """Each user rates movies 1, 3, 5 at falling times: 5 train, 3
  validation, 1 test."""
  return [(u, m, 1 + (u + m) % 5, T0 + offset + 10 * u - k)
          for u in range(1, 5) for k, m in enumerate((1, 3, 5))]


# --- Parsing and features. ----------------------------------------------------


def test_fake_features_by_hand(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  splits = movielens_1m.load(_cfg(raw, tmp_path / "tfds"))
  spec = splits.spec
  assert spec.name == "movielens_1m"
  assert [f.name for f in spec.sparse] == list(movielens.SPARSE_FIELDS)
  assert {f.name: f.vocab_size for f in spec.sparse} == {
      "user_id": 4, "item_id": 6, "age_bucket": 7, "gender": 2,
      "occupation": 21, "zip_prefix": 11, "release_decade": 3}
  assert spec.task_names == ("rating", "like")
  assert spec.multi_hot[0].vocab_size == 18
  assert spec.multi_hot[0].max_len == movielens.GENRES_MAX_LEN
  # Test: each user's newest rating, movie 1 (item 0, 1995 -> decade 1).
  np.testing.assert_array_equal(
      splits.test["sparse"],
      # user, item, age, gender, occupation, zip, decade
      [[0, 0, 0, 1, 10, 4, 1], [1, 0, 6, 0, 16, 7, 1],
       [2, 0, 2, 0, 15, 10, 1], [3, 0, 4, 1, 7, 0, 1]])
  # Genres index GENRES: Animation 2, Children's 3, Comedy 4, Romance 13,
  # Sci-Fi 14.
  np.testing.assert_array_equal(splits.test["multi_hot/genres"][0],
                                [2, 3, 4, -1, -1, -1])
  np.testing.assert_array_equal(splits.validation["multi_hot/genres"][0],
                                [4, 13, -1, -1, -1, -1])
  # Train: movie 5 (item 4), Metropolis (1927) -> decade 0.
  np.testing.assert_array_equal(splits.train["sparse"][:, 1], [4] * 4)
  np.testing.assert_array_equal(splits.train["sparse"][:, 6], [0] * 4)
  np.testing.assert_array_equal(splits.train["multi_hot/genres"][:, :2],
                                [[14, -1]] * 4)
  np.testing.assert_array_equal(splits.extras["test"]["timestamp"],
                                [T0 + 10, T0 + 20, T0 + 30, T0 + 40])
  for split in SPLITS:
    cols = splits.split(split)
    np.testing.assert_array_equal(cols["user_id"], cols["sparse"][:, 0])
    np.testing.assert_array_equal(cols["labels/like"],
                                  cols["labels/rating"] >= 4)
  # rating = 1 + (user + movie) % 5: users 1..4 on movie 1 -> 3, 4, 5, 1.
  np.testing.assert_array_equal(splits.test["labels/rating"], [3, 4, 5, 1])


def test_latin1_title_and_missing_year_are_read(tmp_path):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  movies = movielens_1m.parse_movies(raw / "movies.dat")
  assert movies["decades"] == [1920, 1990]
  np.testing.assert_array_equal(movies["known"],
                                [True, False, True, True, True, True])
  # Movie 4 (latin-1 title, 1995) -> decade 1; movie 6 (no year) -> 2.
  np.testing.assert_array_equal(movies["release_decade"][[3, 5]], [1, 2])
  np.testing.assert_array_equal(movies["genres"][3, :2], [1, 14])
  assert movies["max_genres"] == 3


# --- The split rules of ML-100K. ----------------------------------------------


def test_split_rules_per_user_sizes_and_chronology(tmp_path):
  """Users with 2, 3, 20 and 25 ratings (tied and shuffled times) split as
  split_points says: (2, 0, 0), (1, 1, 1), (16, 2, 2), (20, 2, 3); per user
  every train rating precedes every validation one, which precedes every
  test one, in (timestamp, item) order."""
  rng = np.random.default_rng(0)
  movies = [f"{m}::Movie {m} ({1950 + m})::Drama" for m in range(1, 26)]
  counts = {1: 2, 2: 3, 3: 20, 4: 25}
  ratings = [(u, int(m), int(rng.integers(1, 6)), T0 + int(rng.integers(5)))
             for u, n in counts.items()
             for m in rng.permutation(np.arange(1, 26))[:n]]
  ratings = [ratings[i] for i in rng.permutation(len(ratings))]
  raw = _write_fake(tmp_path / "raw", ratings, movies=movies)
  splits = movielens_1m.load(_cfg(raw, tmp_path / "tfds"))
  sizes = {u: tuple(int((splits.split(s)["user_id"] == u - 1).sum())
                    for s in SPLITS) for u in counts}
  assert sizes == {1: (2, 0, 0), 2: (1, 1, 1), 3: (16, 2, 2), 4: (20, 2, 3)}
  keys = {}
  for split in SPLITS:
    cols = splits.split(split)
    keys[split] = (cols["user_id"], splits.extras[split]["timestamp"] * 100 +
                   cols["sparse"][:, 1])
  for u in (1, 2, 3):  # 0-based ids of the users with >= 3 ratings
    last_train = keys["train"][1][keys["train"][0] == u].max()
    val = keys["validation"][1][keys["validation"][0] == u]
    first_test = keys["test"][1][keys["test"][0] == u].min()
    assert last_train < val.min() and val.max() < first_test
  # Rows keep ratings.dat order within a split.
  file_order = {(u - 1, m - 1): i for i, (u, m, _, _) in enumerate(ratings)}
  for split in SPLITS:
    cols = splits.split(split)
    lines = [file_order[(u, i)] for u, i in zip(cols["user_id"],
                                                cols["sparse"][:, 1])]
    assert lines == sorted(lines)


# --- Bad data: file and line named. -------------------------------------------


@pytest.mark.parametrize("file,line,bad,pattern", [
    ("ratings.dat", 3, "1::x::4::978300000",
     r"ratings\.dat:3: item id 'x' is not an integer"),
    ("ratings.dat", 3, "9::1::4::978300000",
     r"ratings\.dat:3: user id 9 is not in users\.dat"),
    ("ratings.dat", 3, "1::2::4::978300000",
     r"ratings\.dat:3: item id 2 is not in movies\.dat"),
    ("ratings.dat", 3, "1::1::6::978300000",
     r"ratings\.dat:3: rating 6 is outside 1\.\.5"),
    ("ratings.dat", 3, "1::1::4",
     r"ratings\.dat:3: expected 4 '::'-separated fields, got 3"),
    ("users.dat", 2, "2::M::30::16::70072",
     r"users\.dat:2: age code 30 not in \(1, 18, 25, 35, 45, 50, 56\)"),
    ("users.dat", 2, "2::X::56::16::70072", r"users\.dat:2: gender 'X'"),
    ("users.dat", 2, "2::M::56::21::70072",
     r"users\.dat:2: occupation 21 not in 0\.\.20"),
    ("users.dat", 2, "1::M::56::16::70072",
     r"users\.dat:2: user id 1 appears twice \(first on line 1\)"),
    ("users.dat", 2, "2|M|56|16|70072",
     r"users\.dat:2: expected 5 '::'-separated fields, got 1"),
    ("movies.dat", 2, "3::Grumpier Old Men (1995)::Comedy|Romantic",
     r"movies\.dat:2: genre 'Romantic' is not one of Action, "),
    ("movies.dat", 2, "3::Everything (1995)::Action|Adventure|Animation|"
     "Comedy|Crime|Drama|War", r"movies\.dat:2: movie 3 has 7 genres"),
    ("movies.dat", 2, "1::Toy Story again (1995)::Comedy",
     r"movies\.dat:2: movie id 1 appears twice"),
])
def test_bad_row_names_file_and_line(tmp_path, file, line, bad, pattern):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  lines = (raw / file).read_text(encoding="latin-1").splitlines()
  lines[line - 1] = bad
  (raw / file).write_text("\n".join(lines) + "\n", encoding="latin-1")
  with pytest.raises(errors.DataError, match=pattern):
    movielens_1m.read_raw(raw)


def test_bad_row_stops_load_and_keeps_the_prepared_data(tmp_path):
  """Through TFDS preparation the error is unchanged, and an earlier
  preparation under the same tfds_dir survives the failed one."""
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  first = movielens_1m.load(_cfg(raw, tmp_path / "tfds"))
  prepared = sorted(p.name for p in (tmp_path / "tfds").rglob("*"))
  bad = _write_fake(tmp_path / "bad", _fake_ratings() + [(9, 1, 5, T0)])
  with pytest.raises(errors.DataError,
                     match=r"ratings\.dat:13: user id 9 is not in users\.dat"):
    movielens_1m.load(_cfg(bad, tmp_path / "tfds"))
  assert sorted(p.name for p in (tmp_path / "tfds").rglob("*")) == prepared
  again = movielens_1m.load(_cfg(raw, tmp_path / "tfds"))
  np.testing.assert_array_equal(again.test["sparse"], first.test["sparse"])


def test_missing_files_name_dir_files_and_flag(tmp_path):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "ratings.dat").write_text("1::1::5::100\n")
  with pytest.raises(errors.MissingDataError) as err:
    movielens_1m.load(_cfg(tmp_path / "raw", tmp_path / "tfds"))
  msg = str(err.value)
  assert "missing users.dat, movies.dat" in msg
  assert str(tmp_path / "raw") in msg
  assert "--config.data.data_dir=/path/to/ml-1m" in msg


# --- Download path. -----------------------------------------------------------


def test_failed_download_asks_for_the_local_dir_in_one_line(tmp_path,
                                                            monkeypatch):
  def no_network(self, url):
    raise ConnectionError(f"Failed to resolve {url}\n(more lines)")

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      no_network)
  monkeypatch.setattr(movielens, "check_host_resolves", lambda url: None)
  with pytest.raises(errors.MissingDataError) as err:
    movielens_1m.load(_cfg("", tmp_path / "tfds"))
  msg = str(err.value)
  assert "\n" not in msg
  assert msg.startswith(f"Could not download {movielens_1m.ML1M.url} "
                        "(ConnectionError: Failed to resolve")
  assert msg.endswith("pass the unzipped ml-1m folder with "
                      "--config.data.data_dir=/path/to/ml-1m.")


def test_unresolvable_host_fails_at_once_without_retrying(tmp_path,
                                                         monkeypatch):
  """Offline, the host does not resolve: one line at once, instead of TFDS's
  minutes of retries (no download is attempted)."""
  attempts = []

  def no_dns(host, port, *args, **kwargs):
    raise socket.gaierror(-2, f"Name or service not known: {host}:{port}")

  monkeypatch.setattr(socket, "getaddrinfo", no_dns)
  monkeypatch.setattr(urllib.request, "getproxies", dict)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, url: attempts.append(url))
  with pytest.raises(errors.MissingDataError) as err:
    movielens_1m.load(_cfg("", tmp_path / "tfds"))
  assert attempts == []
  assert str(err.value) == (
      f"Could not download {movielens_1m.ML1M.url} (gaierror: [Errno -2] "
      "Name or service not known: files.grouplens.org:443); pass the "
      "unzipped ml-1m folder with --config.data.data_dir=/path/to/ml-1m.")


def test_without_data_dir_reads_the_downloaded_zip(tmp_path, monkeypatch):
  extracted = tmp_path / "extracted"
  _write_fake(extracted / "ml-1m", _fake_ratings())
  urls = []

  def fake_download_and_extract(self, url):
    urls.append(url)
    return extracted

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      fake_download_and_extract)
  monkeypatch.setattr(movielens, "check_host_resolves", lambda url: None)
  splits = movielens_1m.load(_cfg("", tmp_path / "tfds"))
  assert urls == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
  assert len(splits.train["user_id"]) == 4


# --- Cache, regeneration and the shared load options. -------------------------


def test_cache_regeneration_and_load_options(tmp_path, monkeypatch):
  raw = _write_fake(tmp_path / "raw", _fake_ratings())
  cfg = _cfg(raw, tmp_path / "tfds")
  first = movielens_1m.load(cfg)

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded TFDS examples instead of reading the cache")

  with monkeypatch.context() as m:
    m.setattr(movielens, "read_split", no_decoding)
    again = movielens_1m.load(cfg)
    funnel = movielens_1m.load(_cfg(raw, tmp_path / "tfds",
                                    task_group="like_love"))
    small = movielens_1m.load(_cfg(raw, tmp_path / "tfds", max_examples=2))
  for split in SPLITS:
    for k, v in first.split(split).items():
      np.testing.assert_array_equal(again.split(split)[k], v, err_msg=k)
  # max_examples: the first rows, 2 of train and max(1, 2 // 8) of the rest.
  for split, n in zip(SPLITS, (2, 1, 1)):
    np.testing.assert_array_equal(small.split(split)["sparse"],
                                  first.split(split)["sparse"][:n])
  assert funnel.spec.task_names == ("like", "love")
  np.testing.assert_array_equal(funnel.test["labels/love"], [0, 0, 1, 0])
  # History: each test rating sees the user's train then validation items.
  hist = movielens_1m.load(_cfg(raw, tmp_path / "tfds", history_len=3))
  np.testing.assert_array_equal(hist.test["sequence/history"],
                                [[-1, 4, 2]] * 4)
  # Changed raw files under the same tfds_dir are re-prepared.
  _write_fake(raw, _fake_ratings(offset=1000))
  changed = movielens_1m.load(cfg)
  np.testing.assert_array_equal(changed.extras["test"]["timestamp"],
                                [T0 + 1010, T0 + 1020, T0 + 1030, T0 + 1040])


# --- Training through the registry. -------------------------------------------


def test_smoke_config_trains_through_the_registry(tmp_path):
  """configs/movielens_1m_mmoe.py:smoke (data.name = "movielens_1m") on a
  fake ml-1m of 20 users x 25 movies."""
  rng = np.random.default_rng(1)
  users = [f"{u}::{'MF'[u % 2]}::{movielens_1m.AGE_CODES[u % 7]}::{u % 21}"
           f"::{u:05d}" for u in range(1, 21)]
  movies = [f"{m}::Movie {m} ({1950 + 2 * m})::"
            f"{movielens_1m.GENRES[m % 18]}" for m in range(1, 26)]
  ratings = [(u, m, int(rng.integers(1, 6)), T0 + 100 * m + u)
             for u in range(1, 21) for m in range(1, 26)]
  raw = _write_fake(tmp_path / "raw", ratings, users=users, movies=movies)
  config = movielens_1m_mmoe.get_config("smoke")
  assert config.data.name == "movielens_1m"
  config.data.data_dir = str(raw)
  config.data.tfds_dir = str(tmp_path / "tfds")
  config.train.batch_size = 64
  config.train.num_steps = 4  # compile, train, evaluate: the wiring only
  config.train.eval_every = config.train.checkpoint_every = 2
  splits = data_lib.load_dataset(config.data)
  assert splits.spec.name == "movielens_1m"
  assert [len(splits.split(s)["user_id"]) for s in SPLITS] == [400, 40, 60]
  results = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["test"]["rating/rmse"] > 0
  assert 0 <= results["test"]["like/auc"] <= 1
  assert results["best_step"] > 0
