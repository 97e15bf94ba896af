"""MovieLens latest-small (ml-latest-small, 2018) as numpy columns.

The second MovieLens dataset ("movielens_latest_small"): 100,836 ratings of
9,742 movies by 610 users, 0.5..5 stars in half steps, no demographics. The
split and the tasks are those of MovieLens 100K (`movielens.py`, whose
`split_users` this module reuses): per user in (timestamp, item, file) order,
the oldest 80% train, the next 10% validation, the newest 10% test (users
with < 3 ratings all train; every user here has >= 20).
Tasks: `rating` (regression, MSE) and `like` = 1 if rating >= 4 (binary).

Features (all ids 0-based, vocabularies from the full files, never labels):
  user_id:              userId - 1 (vocab = largest userId, 610).
  item_id:              index of movieId in movies.csv sorted by movieId
                        (9,742); a rating of a movie not in movies.csv is a
                        DataError.
  release_decade:       decade of the year in the title's trailing "(1995)",
                        index in the sorted distinct decades of movies.csv;
                        titles without one (13, e.g. "Babylon 5") get the
                        last index ('unknown').
  years_since_release:  year of the rating (UTC) minus release year,
                        bucketed <=0, 1, 2-4, 5-9, 10-19, 20-39, 40+,
                        unknown -> 0..7. Known when the rating is made.
  genres (multi-hot):   indices in the sorted distinct genres of movies.csv
                        (20, '(no genres listed)' being one of them, so every
                        movie has at least one), padded with -1 to
                        GENRES_MAX_LEN = 10 (the most of any movie; checked).
Left out: tags.csv (tags are written by the rating users themselves, mostly
in the same session as their ratings, and the newest ones would describe the
validation / test ratings: leakage) and links.csv (external ids, no signal
without external data). No per-user or per-item rating statistics: computed
on train they would contain each training row's own label.

Why no TFDS builder (unlike movielens.py): TFDS's per-example serialisation
of ~100k examples costs ~18 s on a small machine (measured on ML-100K) for
what numpy parses in about a second; the decoded columns are cached as npz
(`mtkd_jax.data.cache`) keyed by the files' contents. There is no download
path: the GroupLens licence forbids redistribution, pass a local copy.
"""
import csv
import dataclasses
import pathlib
import re
from typing import Any, Dict, List

import numpy as np

from mtkd_jax import errors
from mtkd_jax.data import cache
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import movielens
from mtkd_jax.data import specs

NAME = "movielens_latest_small"
URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
REQUIRED_FILES = ("ratings.csv", "movies.csv")
DATA_DIR_FLAG = "--config.data.data_dir=/path/to/ml-latest-small"
RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
MOVIES_HEADER = ("movieId", "title", "genres")
NO_GENRES = "(no genres listed)"
GENRES_MAX_LEN = 10
YEAR_GAP_BOUNDS = (1, 2, 5, 10, 20, 40)  # bucket k: gap < bound k
NUM_YEAR_GAP_BUCKETS = len(YEAR_GAP_BOUNDS) + 2  # + 40+ and unknown
SPARSE_FIELDS = ("user_id", "item_id", "release_decade",
                 "years_since_release")
SPLITS = ("train", "validation", "test")
# rating (mse, half stars 0.5..5), like (bce)
TASKS = (dataclasses.replace(movielens.TASKS[0], label_range=(0.5, 5.0)),
         movielens.TASKS[1])
LIKE_THRESHOLD = movielens.LIKE_THRESHOLD
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_CACHE_FORMAT = "movielens-latest-columns-v1"


def check_raw_dir(data_dir) -> pathlib.Path:
  """Returns `data_dir` as a Path, or raises if it lacks a required file."""
  if not str(data_dir or ""):
    raise errors.MissingDataError(
        f"MovieLens latest-small needs data.data_dir: the unzipped folder of "
        f"{URL} (with {', '.join(REQUIRED_FILES)}). Pass it with "
        f"{DATA_DIR_FLAG}.")
  path = cache.resolve_dir(data_dir, "")
  missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
  if missing:
    where = "exists" if path.is_dir() else "does not exist"
    raise errors.MissingDataError(
        f"MovieLens latest-small data_dir {str(path)!r} ({where}) is missing "
        f"{', '.join(missing)} (needs {', '.join(REQUIRED_FILES)}). Pass the "
        f"unzipped ml-latest-small folder with {DATA_DIR_FLAG}.")
  return path


def _read_csv(path: pathlib.Path, header):
  """Yields (line number, fields) of each data row; checks header and width."""
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f)
    first = tuple(next(reader, ()))
    if first != tuple(header):
      raise errors.DataError(f"{path}:1: header {first!r}, expected "
                             f"{tuple(header)!r}.")
    for fields in reader:
      line_no = reader.line_num
      if not fields:
        continue
      if len(fields) != len(header):
        raise errors.DataError(
            f"{path}:{line_no}: expected {len(header)} fields, got "
            f"{len(fields)}: {','.join(fields)[:80]!r}.")
      yield line_no, fields


def _number(value: str, kind, path, line_no: int, field: str):
  try:
    return kind(value)
  except ValueError:
    what = "an integer" if kind is int else "a number"
    raise errors.DataError(f"{path}:{line_no}: field {field!r} value "
                           f"{value!r} is not {what}.") from None


def release_year(title: str):
  """The year in a title's trailing "(1995)", or None."""
  match = _TITLE_YEAR.search(title)
  return int(match.group(1)) if match else None


def parse_movies(path) -> Dict[str, Any]:
  """Reads movies.csv.

  Returns:
    A dict with "movie_ids" (sorted int64 movieIds), and per movie in that
    order "genres" int32[M, GENRES_MAX_LEN] (-1 padded), "release_year"
    int64 (-1 unknown), "release_decade" int32; and the vocabularies
    "genre_names" and "decades".
  """
  rows = []
  for line_no, (movie_id, title, genres) in _read_csv(path, MOVIES_HEADER):
    movie_id = _number(movie_id, int, path, line_no, "movieId")
    names = [g.strip() for g in genres.split("|") if g.strip()] or [NO_GENRES]
    if len(names) > GENRES_MAX_LEN:
      raise errors.DataError(
          f"{path}:{line_no}: field 'genres' lists {len(names)} genres, more "
          f"than GENRES_MAX_LEN={GENRES_MAX_LEN}.")
    rows.append((movie_id, names, release_year(title), line_no))
  if not rows:
    raise errors.DataError(f"{path}: no movies.")
  rows.sort()
  ids = np.asarray([r[0] for r in rows], np.int64)
  dup = np.flatnonzero(np.diff(ids) == 0)
  if len(dup):
    raise errors.DataError(f"{path}:{rows[dup[0] + 1][3]}: field 'movieId' "
                           f"{ids[dup[0]]} appears twice.")
  genre_names = sorted({g for r in rows for g in r[1]})
  decades = sorted({y // 10 * 10 for _, _, y, _ in rows if y is not None})
  genres = np.full((len(rows), GENRES_MAX_LEN), -1, np.int32)
  for i, (_, names, _, _) in enumerate(rows):
    genres[i, :len(names)] = [genre_names.index(g) for g in names]
  years = np.asarray([-1 if y is None else y for _, _, y, _ in rows], np.int64)
  decade = np.asarray([len(decades) if y is None
                       else decades.index(y // 10 * 10)
                       for _, _, y, _ in rows], np.int32)
  return {"movie_ids": ids, "genres": genres, "release_year": years,
          "release_decade": decade, "genre_names": genre_names,
          "decades": decades}


def parse_ratings(path, movie_ids: np.ndarray) -> Dict[str, np.ndarray]:
  """Reads ratings.csv into arrays in file order.

  Returns:
    "user_id" (userId - 1), "item_id" (index into `movie_ids`), int32;
    "rating" float32; "timestamp" int64.
  """
  cols: List[list] = [[], [], [], []]
  for line_no, (u, m, r, t) in _read_csv(path, RATINGS_HEADER):
    u = _number(u, int, path, line_no, "userId")
    m = _number(m, int, path, line_no, "movieId")
    r = _number(r, float, path, line_no, "rating")
    t = _number(t, int, path, line_no, "timestamp")
    if u < 1:
      raise errors.DataError(f"{path}:{line_no}: field 'userId' value {u} "
                             "< 1.")
    if not 0.5 <= r <= 5.0:
      raise errors.DataError(f"{path}:{line_no}: field 'rating' value {r} is "
                             "outside 0.5..5.")
    item = int(np.searchsorted(movie_ids, m))
    if item >= len(movie_ids) or movie_ids[item] != m:
      raise errors.DataError(f"{path}:{line_no}: field 'movieId' value {m} "
                             "is not in movies.csv.")
    for col, v in zip(cols, (u - 1, item, r, t)):
      col.append(v)
  return movielens.rating_columns(cols, path)


def years_since_release_bucket(rating_year: np.ndarray,
                               release_year_: np.ndarray) -> np.ndarray:
  """Bucket 0..7 of rating year - release year (7 = unknown release)."""
  gap = rating_year - release_year_
  bucket = np.searchsorted(YEAR_GAP_BOUNDS, gap, side="right")
  return np.where(release_year_ < 0, NUM_YEAR_GAP_BUCKETS - 1,
                  bucket).astype(np.int32)


def utc_year(timestamp: np.ndarray) -> np.ndarray:
  return (timestamp.astype("datetime64[s]").astype("datetime64[Y]")
          .astype(np.int64) + 1970)


def read_raw(data_dir):
  """Parses the files into per-split columns (+ "timestamp") and metadata."""
  path = check_raw_dir(data_dir)
  movies = parse_movies(path / "movies.csv")
  ratings = parse_ratings(path / "ratings.csv", movies["movie_ids"])
  u, i = ratings["user_id"], ratings["item_id"]
  n = len(u)
  sparse = np.stack([
      u, i, movies["release_decade"][i],
      years_since_release_bucket(utc_year(ratings["timestamp"]),
                                 movies["release_year"][i])], axis=1)
  cols = {
      "sparse": sparse.astype(np.int32).reshape(n, len(SPARSE_FIELDS)),
      "dense": np.zeros((n, 0), np.float32),
      "multi_hot/genres": movies["genres"][i],
      "labels/rating": ratings["rating"],
      "labels/like": (ratings["rating"] >= LIKE_THRESHOLD).astype(np.float32),
      "weights": np.ones(n, np.float32),
      "user_id": u,
      "timestamp": ratings["timestamp"],
  }
  part = movielens.split_users(u, ratings["timestamp"], i)
  splits = {name: {k: v[part == k_] for k, v in cols.items()}
            for k_, name in enumerate(SPLITS)}
  empty = [name for name in SPLITS if not len(splits[name]["user_id"])]
  if empty:
    raise errors.DataError(f"MovieLens latest-small splits {empty} would be "
                           "empty: no user has the 3 ratings needed.")
  metadata = {
      "vocab_sizes": {"user_id": int(u.max()) + 1,
                      "item_id": len(movies["movie_ids"]),
                      "release_decade": len(movies["decades"]) + 1,
                      "years_since_release": NUM_YEAR_GAP_BUCKETS},
      "genres": movies["genre_names"],
      "decades": movies["decades"],
  }
  return splits, metadata


def make_spec(metadata, embed_dim: int = 16) -> specs.DatasetSpec:
  vocab = metadata["vocab_sizes"]
  return specs.DatasetSpec(
      name=NAME,
      sparse=tuple(specs.SparseField(f, int(vocab[f]), embed_dim)
                   for f in SPARSE_FIELDS),
      dense=(),
      tasks=TASKS,
      multi_hot=(specs.MultiHotField("genres", len(metadata["genres"]),
                                     GENRES_MAX_LEN, embed_dim),),
      has_user_id=True)


def load(cfg) -> specs.Splits:
  """Loads MovieLens latest-small as numpy columns in the batch layout.

  Args:
    cfg: a ConfigDict (or any object with attributes) with
      data_dir: the unzipped ml-latest-small folder. Required.
      cache_dir: where the columns are cached ('' -> ~/.cache/mtkd_jax/
        columns).
      max_examples: 0 for all; else train keeps its first max_examples rows
        and validation / test their first max(1, max_examples // 8), in
        ratings.csv order.
      embed_dim: the embedding width put in the spec (default 16).

  Returns:
    `specs.Splits` whose splits hold "sparse" int32[N, 4] (SPARSE_FIELDS),
    "dense" float32[N, 0], "multi_hot/genres" int32[N, 10], "labels/rating",
    "labels/like", "weights", "user_id"; `extras[split]["timestamp"]`.
  """
  path = check_raw_dir(cache.get_option(cfg, "data_dir", ""))
  max_examples = int(cache.get_option(cfg, "max_examples", 0))
  embed_dim = int(cache.get_option(cfg, "embed_dim", 16))
  cache_dir = cache.resolve_dir(cache.get_option(cfg, "cache_dir", ""),
                                cache.DEFAULT_CACHE_DIR)
  files = [path / f for f in REQUIRED_FILES]
  key = cache.cache_key(_CACHE_FORMAT, cache.fingerprint(files))
  cache_file = cache.cache_path(cache_dir, NAME, key)
  cached = cache.load(cache_file)
  if cached is None:
    cols, metadata = read_raw(path)
    cache.save(cache_file, cols, metadata)
  else:
    cols, metadata = cached
  spec = make_spec(metadata, embed_dim)
  splits, extras = {}, {}
  for split in SPLITS:
    c = dict(cols[split])
    if max_examples > 0:
      c = cache.head(c, max_examples if split == "train"
                     else max(1, max_examples // 8))
    extras[split] = {"timestamp": c.pop("timestamp")}
    columns_lib.validate_columns(spec, c, split)
    splits[split] = c
  return specs.Splits(spec=spec, extras=extras, **splits)
