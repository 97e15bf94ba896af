"""MovieLens 1M: a TFDS builder ('mtkd_movielens1m') and `load(cfg)`.

1,000,209 ratings (1..5 stars) of 3,706 movies by 6,040 users (each with at
least 20), from the GroupLens files `ratings.dat`, `users.dat` and
`movies.dat` ('::'-separated, latin-1). Everything after parsing is the
MovieLens-100K pipeline of `movielens.py`: the same example features, tasks
(`rating`, `like` = rating >= 4, and the task groups, history and retrieval
options of `movielens.load`), the same per-user chronological 80/10/10 split
(`movielens.split_users`), the same TFDS preparation in a temporary directory
renamed into place, and the same npz column cache beside it.

It reads a local copy (`--config.data.data_dir=/path/to/ml-1m`); an empty
data_dir downloads the official zip, and a failed download stops with one
line asking for the local copy. The licence forbids redistribution: never
copy the data into the repository.

Features (all ids 0-based, vocabularies computed from the full files):
  user_id, item_id:  UserID / MovieID minus one; vocab = the largest id in
                     users.dat / movies.dat (6,040 / 3,952; MovieIDs have
                     gaps, and a gap's row is never used).
  age_bucket:        index of the age code in AGE_CODES (1 = under 18, 18,
                     25, 35, 45, 50, 56+): the buckets ML-100K's ages are
                     mapped to, so the two releases share the field.
  gender:            M -> 0, F -> 1.
  occupation:        the occupation code 0..20 (OCCUPATIONS; 0 = other or
                     not specified).
  zip_prefix:        first character of the zip code if a digit (0..9),
                     else 10.
  release_decade:    decade of the year in the title's trailing "(1995)",
                     index in the sorted distinct decades of movies.dat; a
                     title without a year gets the last index ('unknown').
  genres:            indices in GENRES (18, ML-100K's list without
                     'unknown'), padded with -1 to `movielens.GENRES_MAX_LEN`.
  timestamp, rating: as in ratings.dat; like = 1.0 if rating >= 4 else 0.0.
"""
from typing import Any, Dict

import numpy as np
import tensorflow_datasets as tfds

from mtkd_jax import errors
from mtkd_jax.data import movielens
from mtkd_jax.data import movielens_latest
from mtkd_jax.data import specs

ML1M = movielens.Variant(
    name="movielens_1m", title="MovieLens 1M",
    url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    folder="ml-1m", required_files=("ratings.dat", "users.dat", "movies.dat"),
    homepage="https://grouplens.org/datasets/movielens/1m/")
NAME = ML1M.name
SEP = "::"
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)  # lower bounds of the age buckets
OCCUPATIONS = (
    "other or not specified", "academic/educator", "artist",
    "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer")
GENRES = movielens.GENRES[1:]  # no 'unknown' in ML-1M


def _check_new_id(seen: Dict[int, int], value: int, what: str, path,
                  line_no: int) -> None:
  """Raises if `value` < 1 or was already defined (names both lines)."""
  if value < 1:
    raise errors.DataError(f"{path}:{line_no}: {what} {value} < 1.")
  if value in seen:
    raise errors.DataError(f"{path}:{line_no}: {what} {value} appears twice "
                           f"(first on line {seen[value]}).")
  seen[value] = line_no


def parse_users(path) -> Dict[str, Any]:
  """Reads users.dat (`UserID::Gender::Age::Occupation::Zip-code`).

  Returns:
    As `movielens.parse_users`: int32 arrays "age_bucket", "gender",
    "occupation", "zip_prefix" indexed by 0-based user id, "known" (bool)
    and "occupations" (the names of the 21 codes).

  Raises:
    DataError: naming the file and line of a malformed row, an unknown
      gender, age code or occupation code, or a repeated id.
  """
  rows, seen = [], {}
  for line_no, (uid, gender, age, occupation, zip_code) in (
      movielens.read_fields(path, SEP, 5)):
    uid = movielens.to_int(uid, path, line_no, "user id")
    age = movielens.to_int(age, path, line_no, "age code")
    occupation = movielens.to_int(occupation, path, line_no, "occupation")
    _check_new_id(seen, uid, "user id", path, line_no)
    if gender not in movielens.GENDERS:
      raise errors.DataError(f"{path}:{line_no}: gender {gender!r} not in "
                             f"{movielens.GENDERS}.")
    if age not in AGE_CODES:
      raise errors.DataError(f"{path}:{line_no}: age code {age} not in "
                             f"{AGE_CODES}.")
    if not 0 <= occupation < len(OCCUPATIONS):
      raise errors.DataError(f"{path}:{line_no}: occupation {occupation} "
                             f"not in 0..{len(OCCUPATIONS) - 1}.")
    rows.append((uid, AGE_CODES.index(age), movielens.GENDERS.index(gender),
                 occupation, movielens.zip_prefix(zip_code)))
  if not rows:
    raise errors.DataError(f"{path}: no users.")
  num_users = max(r[0] for r in rows)
  fields = ("age_bucket", "gender", "occupation", "zip_prefix")
  out = {k: np.zeros(num_users, np.int32) for k in fields}
  known = np.zeros(num_users, bool)
  for uid, *values in rows:
    for k, v in zip(fields, values):
      out[k][uid - 1] = v
    known[uid - 1] = True
  return dict(out, known=known, occupations=list(OCCUPATIONS))


def parse_movies(path) -> Dict[str, Any]:
  """Reads movies.dat (`MovieID::Title::Genres`, genres '|'-separated).

  Returns:
    As `movielens.parse_items`: "genres" int32[num_items, GENRES_MAX_LEN]
    (indices into GENRES, padded with -1), "release_decade" int32, "known"
    (bool), all indexed by 0-based movie id; "decades" (sorted; index
    len(decades) means unknown) and "max_genres".

  Raises:
    DataError: naming the file and line of a malformed row, a genre not in
      GENRES, more than GENRES_MAX_LEN genres, or a repeated id.
  """
  rows, seen = [], {}
  for line_no, (mid, title, genre_field) in movielens.read_fields(path, SEP,
                                                                  3):
    mid = movielens.to_int(mid, path, line_no, "movie id")
    _check_new_id(seen, mid, "movie id", path, line_no)
    names = [g for g in genre_field.split("|") if g]
    unknown = [g for g in names if g not in GENRES]
    if unknown:
      raise errors.DataError(f"{path}:{line_no}: genre {unknown[0]!r} is not "
                             f"one of {', '.join(GENRES)}.")
    if len(names) > movielens.GENRES_MAX_LEN:
      raise errors.DataError(
          f"{path}:{line_no}: movie {mid} has {len(names)} genres, more "
          f"than GENRES_MAX_LEN={movielens.GENRES_MAX_LEN}.")
    rows.append((mid, [GENRES.index(g) for g in names],
                 movielens_latest.release_year(title)))
  return movielens.item_table(rows, path)


def parse_ratings(path, users_known: np.ndarray,
                  items_known: np.ndarray) -> Dict[str, np.ndarray]:
  """Reads ratings.dat (`UserID::MovieID::Rating::Timestamp`).

  Returns:
    The columns of `movielens.rating_columns`, in file order.

  Raises:
    DataError: naming the file and line of a malformed line, a rating
      outside 1..5, or an id that users.dat / movies.dat do not define.
  """
  return movielens.read_ratings(path, SEP, users_known, items_known,
                                ("users.dat", "movies.dat"))


def read_raw(data_dir) -> Dict[str, Any]:
  """Parses the three files into `movielens.read_raw`'s result."""
  path = movielens.check_raw_dir(data_dir, ML1M)
  users = parse_users(path / "users.dat")
  items = parse_movies(path / "movies.dat")
  ratings = parse_ratings(path / "ratings.dat", users["known"],
                          items["known"])
  return movielens.assemble_examples(
      users, items, ratings, GENRES,
      movielens.source_fingerprint(path, ML1M))


class MovieLens1M(movielens.MovieLensBuilder):
  """MovieLens 1M ratings with user/item side features, split per user."""

  name = "mtkd_movielens1m"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = movielens.manual_download_instructions(ML1M)
  VARIANT = ML1M
  NUM_GENRES = len(GENRES)
  read_raw = staticmethod(read_raw)


def load(cfg) -> specs.Splits:
  """Loads MovieLens 1M: `movielens.load` (same options) on this builder."""
  return movielens.load(cfg, MovieLens1M)
