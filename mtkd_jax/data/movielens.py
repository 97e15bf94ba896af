"""MovieLens 100K: a TFDS builder and a loader into the batch layout.

Two layers:

* `MovieLens100K`, a TFDS `GeneratorBasedBuilder` ('mtkd_movielens100k'),
  turns the raw GroupLens files `u.data`, `u.user`, `u.item` into one example
  per rating with the user's and the item's side features, split per user in
  time order (see `split_points`). It reads the files from a manual directory
  when one is given (`tfds.download.DownloadConfig(manual_dir=...)`) and
  otherwise downloads the official zip. Without TensorFlow it must be prepared
  with `file_format='array_record'` and read with `builder.as_data_source()`.
* `load(cfg)` prepares the dataset once, decodes every split once into numpy
  columns in the batch layout of `mtkd_jax.data.specs`, caches those columns as
  `columns_<split>.npz` next to the prepared data, and returns `specs.Splits`.

MovieLens-1M (`movielens_1m.py`) shares all but the file parsing: its builder
subclasses `MovieLensBuilder` with its own `Variant` (names, URL, files) and
`read_raw`, and its `load` is this one with `builder_cls` set.

The data's licence forbids redistribution: point `data_dir` at a local copy
(`--config.data.data_dir=/path/to/ml-100k`); never copy it into the repository.

Features (all ids 0-based, vocabularies computed from the full files):
  user_id, item_id:  raw 1-based ids minus one; vocab = largest id in
                     u.user / u.item (943 / 1682).
  age_bucket:        MovieLens-1M buckets <18, 18-24, 25-34, 35-44, 45-49,
                     50-55, 56+ -> 0..6.
  gender:            M -> 0, F -> 1.
  occupation:        index in the sorted distinct occupations of u.user (the
                     same order as u.occupation; 21 in ML-100K).
  zip_prefix:        first character of the zip code if it is a digit (0..9),
                     else 10 ('other': Canadian postcodes).
  release_decade:    index in the sorted distinct decades of u.item's release
                     dates; an empty date gets the last index ('unknown').
  genres:            the indices of the item's genre flags (of 19), padded
                     with -1 to `GENRES_MAX_LEN`.
  timestamp, rating: as in u.data; like = 1.0 if rating >= 4 else 0.0.
  love:              (load only, when cfg.task_group = "like_love") 1.0 if
                     rating == 5 else 0.0, derived from the cached rating at
                     load time (not a stored feature). love implies like: the
                     pair is a funnel (like -> love) for ESMM / AITM.
  history:           (load only, when cfg.history_len = L > 0) the item ids
                     of the user's L ratings just before this one in the
                     per-user order of the split, oldest first, padded with
                     -1 on the left; see `user_histories`. A test rating's
                     history holds the user's train / validation items (its
                     past); a train rating never sees validation or test ones.
"""
import dataclasses
import hashlib
import os
import pathlib
import shutil
import socket
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
import urllib.parse
import urllib.request

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mtkd_jax import errors
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import specs


@dataclasses.dataclass(frozen=True)
class Variant:
  """What differs between the GroupLens MovieLens releases read by one
  pipeline (this module's builder, cache and `load`): names and files."""
  name: str  # the dataset's registry and spec name
  title: str  # for messages
  url: str  # the official zip
  folder: str  # the zip's top folder, also the data_dir shown in messages
  required_files: Tuple[str, ...]
  homepage: str

  @property
  def data_dir_flag(self) -> str:
    return f"--config.data.data_dir=/path/to/{self.folder}"


ML100K = Variant(
    name="movielens_100k", title="MovieLens 100K",
    url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    folder="ml-100k", required_files=("u.data", "u.user", "u.item"),
    homepage="https://grouplens.org/datasets/movielens/100k/")
URL = ML100K.url
REQUIRED_FILES = ML100K.required_files
DEFAULT_TFDS_DIR = "~/.cache/mtkd_jax/tfds"
DATA_DIR_FLAG = ML100K.data_dir_flag

AGE_LOWER_BOUNDS = (18, 25, 35, 45, 50, 56)
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
GENDERS = ("M", "F")
NUM_ZIP_PREFIXES = 11  # digits 0..9, then 'other'
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's",
          "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir",
          "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
GENRES_MAX_LEN = 6  # the most genres of any ML-100K item; checked on reading
SPARSE_FIELDS = ("user_id", "item_id", "age_bucket", "gender", "occupation",
                 "zip_prefix", "release_decade")
SPLITS = ("train", "validation", "test")
RATING_RANGE = (1.0, 5.0)  # whole stars
TASKS = (specs.TaskSpec("rating", "regression", "mse",
                        label_range=RATING_RANGE),
         specs.TaskSpec("like", "binary", "bce"))
LIKE_THRESHOLD = 4
LOVE_RATING = 5  # love = rating == 5 (so love implies like)
LOVE_TASK = specs.TaskSpec("love", "binary", "bce")
# data.task_group: the tasks of the spec, in order ("like_love" is a funnel:
# like first, then love, as ESMM / AITM read it).
TASK_GROUPS = {"rating_like": TASKS, "like_love": (TASKS[1], LOVE_TASK)}
NUM_RATING_CLASSES = 5  # data.rating_classes: rating r -> class r - 1
RATING_CLASS_TASK = specs.TaskSpec("rating_class", "multiclass", "softmax_ce",
                                   num_classes=NUM_RATING_CLASSES)
# data.retrieval: every rating is a positive (user, item) interaction.
RETRIEVAL_TASK = specs.TaskSpec("retrieval", "retrieval", "in_batch_softmax",
                                item_field="item_id")
ITEM_FIELDS = ("item_id", "release_decade", "genres")
# Bump when the layout of the cached columns changes. The task options
# (task_group, rating_classes, retrieval) derive their labels from the cached
# columns after loading, so they share one cache and need no bump.
_CACHE_FORMAT = "movielens100k-columns-v2"  # v2: + "sequence/history"
_READ_CHUNK = 4096

_CITATION = """\
@article{harper2015movielens,
  title={The MovieLens Datasets: History and Context},
  author={Harper, F. Maxwell and Konstan, Joseph A.},
  journal={ACM Transactions on Interactive Intelligent Systems},
  volume={5}, number={4}, pages={19:1--19:19}, year={2015}}
"""


# ----------------------------------------------------------------------------
# Reading the raw files.
# ----------------------------------------------------------------------------


def check_raw_dir(data_dir, variant: Variant = ML100K) -> pathlib.Path:
  """Returns `data_dir` as a Path, or raises if it lacks a required file."""
  path = pathlib.Path(os.path.expanduser(str(data_dir)))
  files = variant.required_files
  missing = [f for f in files if not (path / f).is_file()]
  if missing:
    where = "exists" if path.is_dir() else "does not exist"
    raise errors.MissingDataError(
        f"{variant.title} data_dir {str(path)!r} ({where}) is missing "
        f"{', '.join(missing)} (needs {', '.join(files)}). Pass the "
        f"unzipped {variant.folder} folder with {variant.data_dir_flag}, or "
        f"an empty data_dir to download {variant.url}.")
  return path


def read_fields(path: pathlib.Path, sep: str,
                num_fields: int) -> Iterator[Tuple[int, List[str]]]:
  """Yields (1-based line number, fields) of each non-blank line.

  Raises:
    ValueError: naming the file and line, if a line has the wrong number of
      fields.
  """
  with open(path, encoding="latin-1") as f:
    for line_no, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      fields = line.split(sep)
      if len(fields) != num_fields:
        raise errors.DataError(
            f"{path}:{line_no}: expected {num_fields} {sep!r}-separated "
            f"fields, got {len(fields)}: {line[:80]!r}.")
      yield line_no, fields


def to_int(value: str, path, line_no: int, what: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise errors.DataError(f"{path}:{line_no}: {what} {value!r} is not an "
                           "integer.") from None


def age_bucket(age: int) -> int:
  """Maps an age in years to the MovieLens-1M bucket index 0..6."""
  return int(np.searchsorted(AGE_LOWER_BOUNDS, age, side="right"))


def zip_prefix(zip_code: str) -> int:
  """First digit of a zip code, or 10 when it does not start with a digit."""
  first = zip_code.strip()[:1]
  return int(first) if first.isdigit() else NUM_ZIP_PREFIXES - 1


def parse_users(path) -> Dict[str, Any]:
  """Reads u.user (`user id|age|gender|occupation|zip code`).

  Returns:
    A dict with int32 arrays "age_bucket", "gender", "occupation",
    "zip_prefix" indexed by 0-based user id (rows of ids absent from the file
    stay 0), "known" (bool, the ids present) and "occupations" (the sorted
    vocabulary).
  """
  rows = []
  for line_no, (uid, age, gender, occupation, zip_code) in read_fields(
      path, "|", 5):
    uid = to_int(uid, path, line_no, "user id")
    age = to_int(age, path, line_no, "age")
    if uid < 1:
      raise errors.DataError(f"{path}:{line_no}: user id {uid} < 1.")
    if gender not in GENDERS:
      raise errors.DataError(f"{path}:{line_no}: gender {gender!r} not in "
                       f"{GENDERS}.")
    rows.append((uid, age, gender, occupation.strip(), zip_code))
  if not rows:
    raise errors.DataError(f"{path}: no users.")
  occupations = sorted({r[3] for r in rows})
  num_users = max(r[0] for r in rows)
  out = {k: np.zeros(num_users, np.int32)
         for k in ("age_bucket", "gender", "occupation", "zip_prefix")}
  known = np.zeros(num_users, bool)
  for uid, age, gender, occupation, zip_code in rows:
    i = uid - 1
    out["age_bucket"][i] = age_bucket(age)
    out["gender"][i] = GENDERS.index(gender)
    out["occupation"][i] = occupations.index(occupation)
    out["zip_prefix"][i] = zip_prefix(zip_code)
    known[i] = True
  return dict(out, known=known, occupations=occupations)


def _release_year(date: str, path, line_no: int) -> Optional[int]:
  """Year of a 'dd-Mon-yyyy' release date, None when the date is empty."""
  if not date.strip():
    return None
  return to_int(date.strip().rsplit("-", 1)[-1], path, line_no,
                "release year")


def parse_items(path) -> Dict[str, Any]:
  """Reads u.item (`movie id|title|release date|video date|URL|19 flags`).

  Returns:
    A dict with "genres" int32[num_items, GENRES_MAX_LEN] (genre indices
    padded with -1), "release_decade" int32[num_items], "known" (bool) and
    "decades" (the sorted decades; index len(decades) means unknown), all
    indexed by 0-based item id, and "max_genres" (the real maximum).
  """
  rows = []
  for line_no, fields in read_fields(path, "|", 5 + len(GENRES)):
    iid = to_int(fields[0], path, line_no, "movie id")
    if iid < 1:
      raise errors.DataError(f"{path}:{line_no}: movie id {iid} < 1.")
    flags = [to_int(v, path, line_no, "genre flag") for v in fields[5:]]
    genres = [g for g, v in enumerate(flags) if v]
    if len(genres) > GENRES_MAX_LEN:
      raise errors.DataError(
          f"{path}:{line_no}: movie {iid} has {len(genres)} genres, more than "
          f"GENRES_MAX_LEN={GENRES_MAX_LEN}; raise it (and the version).")
    rows.append((iid, genres, _release_year(fields[2], path, line_no)))
  return item_table(rows, path)


def item_table(rows, path) -> Dict[str, Any]:
  """parse_items' result from (1-based movie id, genre indices, release year
  or None) rows; shared by every MovieLens release's movie file reader."""
  if not rows:
    raise errors.DataError(f"{path}: no movies.")
  decades = sorted({y // 10 * 10 for _, _, y in rows if y is not None})
  num_items = max(r[0] for r in rows)
  genres = np.full((num_items, GENRES_MAX_LEN), -1, np.int32)
  decade = np.zeros(num_items, np.int32)
  known = np.zeros(num_items, bool)
  for iid, item_genres, year in rows:
    genres[iid - 1, :len(item_genres)] = item_genres
    decade[iid - 1] = (len(decades) if year is None
                       else decades.index(year // 10 * 10))
    known[iid - 1] = True
  return {"genres": genres, "release_decade": decade, "known": known,
          "decades": decades,
          "max_genres": max(len(g) for _, g, _ in rows)}


def parse_ratings(path, users_known: np.ndarray,
                  items_known: np.ndarray) -> Dict[str, np.ndarray]:
  """Reads u.data (`user id<TAB>item id<TAB>rating<TAB>timestamp`).

  Returns:
    A dict of arrays in file order: "user_id", "item_id" (0-based int32),
    "rating" (float32), "timestamp" (int64).

  Raises:
    ValueError: naming the file and line of a malformed line or of an id
      that u.user / u.item do not define.
  """
  return read_ratings(path, "\t", users_known, items_known,
                      ("u.user", "u.item"))


def read_ratings(path, sep: str, users_known: np.ndarray,
                 items_known: np.ndarray,
                 id_files: Tuple[str, str]) -> Dict[str, np.ndarray]:
  """Reads `user id, item id, rating, timestamp` lines separated by `sep`.

  Args:
    id_files: the names of the user and the item file, for the message of a
      rating whose id they do not define.

  Returns:
    The columns of `rating_columns`, in file order.
  """
  cols = ([], [], [], [])
  for line_no, fields in read_fields(path, sep, 4):
    uid, iid, rating, ts = (
        to_int(v, path, line_no, what) for v, what in
        zip(fields, ("user id", "item id", "rating", "timestamp")))
    if not 1 <= uid <= len(users_known) or not users_known[uid - 1]:
      raise errors.DataError(f"{path}:{line_no}: user id {uid} is not in "
                             f"{id_files[0]}.")
    if not 1 <= iid <= len(items_known) or not items_known[iid - 1]:
      raise errors.DataError(f"{path}:{line_no}: item id {iid} is not in "
                             f"{id_files[1]}.")
    if not RATING_RANGE[0] <= rating <= RATING_RANGE[1]:
      raise errors.DataError(f"{path}:{line_no}: rating {rating} is outside "
                             f"{RATING_RANGE[0]:g}..{RATING_RANGE[1]:g}.")
    for col, v in zip(cols, (uid - 1, iid - 1, rating, ts)):
      col.append(v)
  return rating_columns(cols, path)


def rating_columns(cols, path) -> Dict[str, np.ndarray]:
  """Parsed (user, item, rating, timestamp) lists -> typed numpy columns."""
  if not cols[0]:
    raise errors.DataError(f"{path}: no ratings.")
  return {"user_id": np.asarray(cols[0], np.int32),
          "item_id": np.asarray(cols[1], np.int32),
          "rating": np.asarray(cols[2], np.float32),
          "timestamp": np.asarray(cols[3], np.int64)}


def split_points(n: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Per-user cut points (val_start, test_start) for n time-sorted ratings.

  A user's ratings sorted by (timestamp, item_id) go to train at positions
  [0, val_start), validation at [val_start, test_start), test at
  [test_start, n), with
    test_start = min(floor(0.9 n), n - 1)
    val_start  = min(floor(0.8 n), test_start - 1).
  So for n >= 3 each split gets at least one rating (n = 20 -> 16/2/2,
  n = 25 -> 20/2/3). Users with n < 3 go entirely to train (`split_users`).
  """
  n = np.asarray(n, np.int64)
  test_start = np.minimum(9 * n // 10, n - 1)
  val_start = np.minimum(8 * n // 10, test_start - 1)
  return val_start, test_start


def split_users(user_id: np.ndarray, timestamp: np.ndarray,
                item_id: np.ndarray) -> np.ndarray:
  """Returns int8 split indices (0 train, 1 validation, 2 test) per rating.

  Each user's ratings are ordered by (timestamp, item_id, file position) and
  cut by `split_points`; users with fewer than 3 ratings are all train. The
  split is chronological per user only: one user's validation ratings can be
  older than another user's training ratings.
  """
  n = len(user_id)
  order = np.lexsort((np.arange(n), item_id, timestamp, user_id))
  sorted_user = user_id[order]
  counts = np.bincount(user_id)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.arange(n) - starts[sorted_user]
  n_user = counts[sorted_user]
  val_start, test_start = split_points(n_user)
  part = np.where(rank < val_start, 0, np.where(rank < test_start, 1, 2))
  part[n_user < 3] = 0
  out = np.empty(n, np.int8)
  out[order] = part
  return out


def read_raw(data_dir) -> Dict[str, Any]:
  """Parses the three raw files of `data_dir` into per-rating arrays.

  Returns:
    A dict with "examples" (a dict of per-rating arrays in u.data order: the
    features of the module docstring plus "split"), and "metadata" (the
    vocabularies, JSON-serialisable).
  """
  path = check_raw_dir(data_dir)
  users = parse_users(path / "u.user")
  items = parse_items(path / "u.item")
  ratings = parse_ratings(path / "u.data", users["known"], items["known"])
  return assemble_examples(users, items, ratings, GENRES,
                           source_fingerprint(path))


def assemble_examples(users, items, ratings, genres: Sequence[str],
                      fingerprint: str) -> Dict[str, Any]:
  """Joins parsed users, items and ratings into `read_raw`'s result.

  Args:
    users: as `parse_users` returns (per-user feature arrays, "known",
      "occupations").
    items: as `parse_items` returns ("genres", "release_decade", "known",
      "decades", "max_genres").
    ratings: as `rating_columns` returns.
    genres: the genre names that the item genre indices point into.
    fingerprint: `source_fingerprint` of the raw files.
  """
  u, i = ratings["user_id"], ratings["item_id"]
  examples = {
      "user_id": u,
      "item_id": i,
      "age_bucket": users["age_bucket"][u],
      "gender": users["gender"][u],
      "occupation": users["occupation"][u],
      "zip_prefix": users["zip_prefix"][u],
      "release_decade": items["release_decade"][i],
      "genres": items["genres"][i],
      "timestamp": ratings["timestamp"],
      "rating": ratings["rating"],
      "like": (ratings["rating"] >= LIKE_THRESHOLD).astype(np.float32),
      "split": split_users(u, ratings["timestamp"], i),
  }
  vocab_sizes = {
      "user_id": len(users["known"]),
      "item_id": len(items["known"]),
      "age_bucket": len(AGE_BUCKETS),
      "gender": len(GENDERS),
      "occupation": len(users["occupations"]),
      "zip_prefix": NUM_ZIP_PREFIXES,
      "release_decade": len(items["decades"]) + 1,
  }
  metadata = {
      "vocab_sizes": vocab_sizes,
      "occupations": users["occupations"],
      "release_decades": items["decades"],
      "genres": list(genres),
      "genres_max_len": GENRES_MAX_LEN,
      "max_genres_per_item": items["max_genres"],
      "source_sha256": fingerprint,
  }
  return {"examples": examples, "metadata": metadata}


def source_fingerprint(data_dir, variant: Variant = ML100K) -> str:
  """sha256 over the required raw files (names and contents)."""
  h = hashlib.sha256()
  for name in variant.required_files:
    h.update(name.encode())
    h.update((pathlib.Path(data_dir) / name).read_bytes())
  return h.hexdigest()


# ----------------------------------------------------------------------------
# The TFDS builder.
# ----------------------------------------------------------------------------


def check_host_resolves(url: str) -> None:
  """Raises OSError at once if `url`'s host has no address and no proxy is
  configured: offline, TFDS would retry with back-off for ~3.5 minutes."""
  if urllib.request.getproxies():
    return  # the proxy resolves the host
  socket.getaddrinfo(urllib.parse.urlparse(url).hostname, 443)


def download_and_extract(dl_manager, variant: Variant) -> pathlib.Path:
  """The official zip's top folder, downloaded and extracted by TFDS.

  Raises:
    MissingDataError: in one line naming the URL, the reason and the flag
      that passes a local copy instead, when the download fails (no network,
      a proxy, a moved file).
  """
  try:
    check_host_resolves(variant.url)
    extracted = dl_manager.download_and_extract(variant.url)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [""])[0][:200]
    raise errors.MissingDataError(
        f"Could not download {variant.url} ({type(e).__name__}: {reason}); "
        f"pass the unzipped {variant.folder} folder with "
        f"{variant.data_dir_flag}.") from e
  return pathlib.Path(extracted) / variant.folder


class MovieLensBuilder(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
  """A MovieLens release as one example per rating, split per user.

  A subclass sets `name`, `VERSION`, `VARIANT`, `NUM_GENRES` and
  `read_raw(data_dir)` (returning what this module's `read_raw` does); the
  features, splits and source handling are shared.
  """

  VARIANT: Variant
  NUM_GENRES: int
  read_raw = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup, for a builder inside a package, needs the optional
    # `importlib_resources` backport; the subclass's file is what it finds.
    return epath.Path(sys.modules[cls.__module__].__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    scalar = tfds.features.Scalar
    features = {
        name: scalar(np.int32, doc=f"{name}, 0-based index")
        for name in SPARSE_FIELDS}
    features.update(
        genres=tfds.features.Tensor(
            shape=(GENRES_MAX_LEN,), dtype=np.int32,
            doc=f"genre indices (of {self.NUM_GENRES}), padded with -1"),
        timestamp=scalar(np.int64, doc="unix seconds"),
        rating=scalar(np.float32, doc="1..5 stars"),
        like=scalar(np.float32, doc="1.0 if rating >= 4 else 0.0"),
    )
    return tfds.core.DatasetInfo(
        builder=self,
        description=sys.modules[type(self).__module__].__doc__,
        features=tfds.features.FeaturesDict(features),
        # Examples keep the ratings file's order within a split (integer
        # keys: the rating's position in the file).
        disable_shuffling=True,
        homepage=self.VARIANT.homepage,
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _source_dir(self, dl_manager) -> pathlib.Path:
    """The manual dir when it holds files, else the downloaded zip."""
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # no manual dir, or an empty one
      return download_and_extract(dl_manager, self.VARIANT)
    return check_raw_dir(manual_dir, self.VARIANT)

  def _split_generators(self, dl_manager):
    raw = type(self).read_raw(self._source_dir(dl_manager))
    empty = [name for k, name in enumerate(SPLITS)
             if not (raw["examples"]["split"] == k).any()]
    if empty:
      raise errors.DataError(
          f"{self.VARIANT.title} splits {empty} would be empty: no user has "
          "the 3 ratings needed for validation and test.")
    self.info.metadata.update(raw["metadata"])
    return {name: self._generate_examples(raw["examples"], k)
            for k, name in enumerate(SPLITS)}

  def _generate_examples(self, examples, split_index):
    keep = np.flatnonzero(examples["split"] == split_index)
    feats = {k: v[keep] for k, v in examples.items() if k != "split"}
    for j, line in enumerate(keep):
      yield int(line), {k: v[j] for k, v in feats.items()}


def manual_download_instructions(variant: Variant) -> str:
  return (f"Unzip {variant.url} and pass the {variant.folder} folder (with "
          f"{', '.join(variant.required_files)}) as the manual dir. Without "
          "one, the zip is downloaded.")


class MovieLens100K(MovieLensBuilder):
  """MovieLens 100K ratings with user/item side features, split per user."""

  name = "mtkd_movielens100k"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_download_instructions(ML100K)
  VARIANT = ML100K
  NUM_GENRES = len(GENRES)
  read_raw = staticmethod(read_raw)


# ----------------------------------------------------------------------------
# Loading into the batch layout.
# ----------------------------------------------------------------------------


def _cfg_get(cfg, name: str, default):
  value = getattr(cfg, name, None)
  return default if value is None else value


def make_spec(metadata, embed_dim: int = 16, history_len: int = 0,
              rating_classes: bool = False, retrieval: bool = False,
              task_group: str = "rating_like",
              name: str = ML100K.name) -> specs.DatasetSpec:
  """The DatasetSpec of the prepared data described by its `metadata`.

  The tasks are those of `TASK_GROUPS[task_group]`. With history_len > 0 it
  has the sequence field "history" (L = history_len) sharing item_id's
  embedding table. rating_classes replaces the regression task "rating" by
  the 5-class task "rating_class" (class = rating - 1); retrieval adds the
  two-tower task "retrieval" (`RETRIEVAL_TASK`).
  """
  vocab = metadata["vocab_sizes"]
  tasks = TASK_GROUPS[task_group]
  if rating_classes:
    tasks = tuple(RATING_CLASS_TASK if t.name == "rating" else t
                  for t in tasks)
  sequences = ()
  if history_len > 0:
    sequences = (specs.SequenceField("history", int(vocab["item_id"]),
                                     history_len, embed_dim, shares="item_id"),)
  return specs.DatasetSpec(
      name=name,
      sparse=tuple(specs.SparseField(f, int(vocab[f]), embed_dim)
                   for f in SPARSE_FIELDS),
      dense=(),
      tasks=tasks + ((RETRIEVAL_TASK,) if retrieval else ()),
      item_fields=ITEM_FIELDS,
      multi_hot=(specs.MultiHotField("genres", len(metadata["genres"]),
                                     int(metadata["genres_max_len"]),
                                     embed_dim),),
      has_user_id=True,
      sequences=sequences)


def examples_to_columns(feats: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Stacked TFDS features -> batch-layout columns (+ "timestamp")."""
  n = len(feats["user_id"])
  return {
      "sparse": np.stack([np.asarray(feats[f], np.int32)
                          for f in SPARSE_FIELDS], axis=1).reshape(n, -1),
      "dense": np.zeros((n, 0), np.float32),
      "multi_hot/genres": np.asarray(feats["genres"], np.int32).reshape(
          n, GENRES_MAX_LEN),
      "labels/rating": np.asarray(feats["rating"], np.float32),
      "labels/like": np.asarray(feats["like"], np.float32),
      "weights": np.ones(n, np.float32),
      "user_id": np.asarray(feats["user_id"], np.int32),
      "timestamp": np.asarray(feats["timestamp"], np.int64),
  }


def user_histories(user_id: np.ndarray, item_id: np.ndarray,
                   order: np.ndarray, history_len: int) -> np.ndarray:
  """Each row's previous items of the same user, in the order `order`.

  Args:
    user_id, item_id: int[N] per rating.
    order: int[N], a permutation listing the rows user by user and, within a
      user, in time order (rows of a user need not be contiguous in input).
    history_len: L.

  Returns:
    int32[N, L]: row r's entry holds the items of the (up to) L rows of r's
    user just before r in `order`, oldest first, most recent in column L - 1,
    left-padded with -1. The first rating of a user has only -1.
  """
  n = len(user_id)
  su, si = np.asarray(user_id)[order], np.asarray(item_id, np.int32)[order]
  new_user = np.ones(n, bool)
  new_user[1:] = su[1:] != su[:-1]
  rank = np.arange(n) - np.maximum.accumulate(
      np.where(new_user, np.arange(n), 0))  # position within the user
  hist = np.full((n, history_len), -1, np.int32)
  for k in range(1, history_len + 1):  # k-th most recent previous rating
    rows = np.flatnonzero(rank >= k)
    hist[rows, history_len - k] = si[rows - k]
  out = np.empty_like(hist)
  out[order] = hist
  return out


def add_history(split_columns: Dict[str, Dict[str, np.ndarray]],
                history_len: int) -> None:
  """Adds "sequence/history" int32[N, L] to each split's columns, in place.

  The order is the one `split_users` cuts: per user by (timestamp, item_id,
  position in u.data). Within a split rows keep u.data order, and a user's
  earlier split holds their earlier ratings, so (user, timestamp, item_id,
  split, row) reproduces it exactly from the split columns.
  """
  parts = [split_columns[s] for s in SPLITS]
  sizes = [len(c["user_id"]) for c in parts]
  user = np.concatenate([c["user_id"] for c in parts])
  item = np.concatenate(
      [c["sparse"][:, SPARSE_FIELDS.index("item_id")] for c in parts])
  ts = np.concatenate([c["timestamp"] for c in parts])
  split = np.repeat(np.arange(len(parts)), sizes)
  row = np.concatenate([np.arange(n) for n in sizes])
  order = np.lexsort((row, split, item, ts, user))
  hist = user_histories(user, item, order, history_len)
  for c, h in zip(parts, np.split(hist, np.cumsum(sizes)[:-1])):
    c["sequence/history"] = h


def read_split(builder, split: str) -> Dict[str, np.ndarray]:
  """Decodes a prepared split once into columns (see examples_to_columns)."""
  source = builder.as_data_source(split)
  names = list(builder.info.features.keys())
  parts = {k: [] for k in names}
  for start in range(0, len(source), _READ_CHUNK):
    rows = source.__getitems__(
        range(start, min(start + _READ_CHUNK, len(source))))
    for k in names:
      parts[k].append(np.stack([r[k] for r in rows]))
  return examples_to_columns({k: np.concatenate(v) for k, v in parts.items()})


def _prepared_stamp(builder, history_len: int = 0) -> str:
  """Identifies the prepared data: its dataset_info.json and metadata.json."""
  h = hashlib.sha256(f"{_CACHE_FORMAT}/history_len={history_len}".encode())
  for name in ("dataset_info.json", "metadata.json"):
    h.update(pathlib.Path(builder.data_dir, name).read_bytes())
  return h.hexdigest()


def _cache_path(builder, split: str, history_len: int = 0) -> pathlib.Path:
  suffix = f"_history{history_len}" if history_len else ""
  return pathlib.Path(builder.data_dir) / f"columns_{split}{suffix}.npz"


def _save_npz(path: pathlib.Path, cols: Dict[str, np.ndarray],
              stamp: str) -> None:
  """Writes `cols` atomically ('/' in keys is stored as '__')."""
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    np.savez(f, _stamp=np.asarray(stamp),
             **{k.replace("/", "__"): v for k, v in cols.items()})
  os.replace(tmp, path)


def _load_npz(path: pathlib.Path,
              stamp: str) -> Optional[Dict[str, np.ndarray]]:
  """The cached columns, or None if absent, unreadable or stale."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as z:
      if str(z["_stamp"]) != stamp:
        return None
      return {k.replace("__", "/"): z[k] for k in z.files if k != "_stamp"}
  except (OSError, ValueError, KeyError):
    return None


def _prepare(data_dir, tfds_dir: str, builder_cls=MovieLens100K):
  """Prepares (or reuses) the TFDS data; returns a builder reading it."""
  variant = builder_cls.VARIANT
  if data_dir:
    data_dir = check_raw_dir(data_dir, variant)
  builder = builder_cls(data_dir=tfds_dir, file_format="array_record")
  if builder.is_prepared() and (
      not data_dir or (builder.info.metadata.get("source_sha256")
                       == source_fingerprint(data_dir, variant))):
    return builder
  # Not prepared, or prepared from other raw files (regenerate rather than
  # serve stale data): prepare beside it, then swap it in.
  _prepare_and_swap(data_dir, tfds_dir, pathlib.Path(builder.data_dir),
                    builder_cls)
  return builder_cls(data_dir=tfds_dir, file_format="array_record")


def _prepare_and_swap(data_dir, tfds_dir: str, final: pathlib.Path,
                      builder_cls=MovieLens100K) -> None:
  """Prepares into a temporary dir under `tfds_dir`, then renames the result
  to `final`: a failed preparation leaves an earlier one as it was."""
  pathlib.Path(tfds_dir).mkdir(parents=True, exist_ok=True)
  tmp_root = pathlib.Path(tempfile.mkdtemp(prefix=".prepare-", dir=tfds_dir))
  try:
    builder = builder_cls(data_dir=str(tmp_root), file_format="array_record")
    builder.download_and_prepare(
        download_dir=os.path.join(tfds_dir, "downloads"),
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(data_dir) if data_dir else None))
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
      final.rename(old)
    pathlib.Path(builder.data_dir).rename(final)
    shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)


def _head(cols: Dict[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
  return {k: v[:n] for k, v in cols.items()}


def load(cfg, builder_cls=MovieLens100K) -> specs.Splits:
  """Loads MovieLens 100K (or `builder_cls`'s release) as numpy columns in
  the batch layout.

  Args:
    cfg: a ConfigDict (or any object with attributes) with
      data_dir: the unzipped ml-100k folder; '' or None downloads the zip.
      tfds_dir: where TFDS writes the prepared data ('' -> DEFAULT_TFDS_DIR).
      max_examples: 0 for all; else train keeps its first max_examples rows
        and validation / test their first max(1, max_examples // 8) (the
        80/10/10 ratio), in the ratings file's order.
      embed_dim: the embedding width put in the spec (default 16).
      history_len: L > 0 adds the sequence "history" (the user's previous L
        items, see `user_histories`); 0 (the default) leaves it out.
      task_group: "rating_like" (default: rating, like) or "like_love"
        (like, love = rating == 5; no rating column). Both read the same
        prepared data and cache: love is derived from the cached rating.
      rating_classes: swap "rating" for the 5-class "rating_class" (needs a
        group with rating). retrieval: add the "retrieval" task.

  Returns:
    `specs.Splits` whose splits hold "sparse" int32[N, 7] (SPARSE_FIELDS),
    "dense" float32[N, 0], "multi_hot/genres" int32[N, 6], "labels/<task>"
    per task of the group, "weights", "user_id" and, with history_len = L > 0,
    "sequence/history" int32[N, L]; `extras[split]["timestamp"]` holds the
    int64 unix times (not a model input). Histories are computed on all the
    data, so `max_examples` keeps each kept row's true history.
  """
  data_dir = _cfg_get(cfg, "data_dir", "")
  tfds_dir = os.path.expanduser(
      _cfg_get(cfg, "tfds_dir", "") or DEFAULT_TFDS_DIR)
  max_examples = int(_cfg_get(cfg, "max_examples", 0))
  embed_dim = int(_cfg_get(cfg, "embed_dim", 16))
  history_len = int(_cfg_get(cfg, "history_len", 0))
  rating_classes = bool(_cfg_get(cfg, "rating_classes", False))
  retrieval = bool(_cfg_get(cfg, "retrieval", False))
  task_group = _cfg_get(cfg, "task_group", "rating_like")
  if history_len < 0:
    raise errors.ConfigError(f"data.history_len must be >= 0 (0 = no history "
                             f"sequence), got {history_len}.")
  if task_group not in TASK_GROUPS:
    raise errors.ConfigError(f"data.task_group {task_group!r} is not one of "
                             f"{', '.join(TASK_GROUPS)}.")
  group_tasks = [t.name for t in TASK_GROUPS[task_group]]
  if rating_classes and "rating" not in group_tasks:
    raise errors.ConfigError(
        f"data.rating_classes replaces the task 'rating', which "
        f"data.task_group={task_group!r} ({', '.join(group_tasks)}) lacks.")

  builder = _prepare(data_dir, tfds_dir, builder_cls)
  spec = make_spec(builder.info.metadata, embed_dim, history_len,
                   rating_classes, retrieval, task_group,
                   builder_cls.VARIANT.name)
  stamp = _prepared_stamp(builder, history_len)
  # One cache per history_len; a history needs every split, so a miss
  # decodes all three.
  cached = {s: _load_npz(_cache_path(builder, s, history_len), stamp)
            for s in SPLITS}
  if any(cols is None for cols in cached.values()):
    cached = {s: read_split(builder, s) for s in SPLITS}
    if history_len:
      add_history(cached, history_len)
    for s in SPLITS:
      _save_npz(_cache_path(builder, s, history_len), cached[s], stamp)
  splits, extras = {}, {}
  for split in SPLITS:
    cols = cached[split]
    if max_examples > 0:
      cols = _head(cols, max_examples if split == "train"
                   else max(1, max_examples // 8))
    extras[split] = {"timestamp": cols.pop("timestamp")}
    if "love" in group_tasks:
      cols["labels/love"] = (cols["labels/rating"] == LOVE_RATING).astype(
          np.float32)
    if rating_classes:
      cols["labels/rating_class"] = cols.pop("labels/rating") - 1.0
    elif "rating" not in group_tasks:
      del cols["labels/rating"]
    splits[split] = cols
  if retrieval:
    add_retrieval_columns(splits, extras, cached, history_len)
  for split in SPLITS:
    columns_lib.validate_columns(spec, splits[split], split)
  return specs.Splits(spec=spec, extras=extras, **splits)


def item_catalogue(all_columns, history_len: int = 0) -> Dict[str, np.ndarray]:
  """Every item of the vocabulary as one batch-layout row, item fields only.

  Row i describes item i: its item_id, release_decade and genres (taken from
  any rating of it; an item never rated keeps decade 0 and no genres). The
  user-side sparse fields are 0 and the history all -1: the item tower of
  `mtkd_jax.models.retrieval` reads only the spec's item_fields.

  Args:
    all_columns: iterable of batch-layout column dicts (e.g. every split).
    history_len: L of "sequence/history" (0: no such column).
  """
  item_col = SPARSE_FIELDS.index("item_id")
  decade_col = SPARSE_FIELDS.index("release_decade")
  sparse = np.concatenate([c["sparse"] for c in all_columns])
  genres = np.concatenate([c["multi_hot/genres"] for c in all_columns])
  num_items = int(sparse[:, item_col].max()) + 1
  out_sparse = np.zeros((num_items, len(SPARSE_FIELDS)), np.int32)
  out_sparse[:, item_col] = np.arange(num_items)
  out_genres = np.full((num_items, GENRES_MAX_LEN), -1, np.int32)
  out_sparse[sparse[:, item_col], decade_col] = sparse[:, decade_col]
  out_genres[sparse[:, item_col]] = genres
  cat = {"sparse": out_sparse, "dense": np.zeros((num_items, 0), np.float32),
         "multi_hot/genres": out_genres}
  if history_len:
    cat["sequence/history"] = np.full((num_items, history_len), -1, np.int32)
  return cat


def add_retrieval_columns(splits, extras, all_columns,
                          history_len: int = 0) -> None:
  """Adds what the "retrieval" task needs, in place.

  Columns of every split: "labels/retrieval" (1.0: every rating is a
  positive interaction) and "item_logq/retrieval", log q_j of the row's item
  j, q_j = (its count in the (kept) train split) / (train rows), at least one
  count: the sampling probability of j as an in-batch negative, for the logQ
  correction of Yi et al. (RecSys 2019). extras["catalogue"]: every item as
  a batch-layout row (`item_catalogue`, from all rows in `all_columns`);
  extras[split]["seen/retrieval"]: bool[num_users, num_items], the items each
  user rated in the earlier splits (none for train, train for validation,
  train + validation for test), excluded from full-catalogue ranking.
  """
  item_col = SPARSE_FIELDS.index("item_id")
  catalogue = item_catalogue(list(all_columns.values()), history_len)
  num_items = len(catalogue["sparse"])
  num_users = int(max(c["user_id"].max() for c in all_columns.values())) + 1
  train_items = splits["train"]["sparse"][:, item_col]
  counts = np.maximum(np.bincount(train_items, minlength=num_items), 1)
  logq = np.log(counts / max(len(train_items), 1)).astype(np.float32)
  seen = np.zeros((num_users, num_items), bool)
  extras["catalogue"] = catalogue
  for split in SPLITS:
    cols = splits[split]
    items = cols["sparse"][:, item_col]
    cols["labels/retrieval"] = np.ones(len(items), np.float32)
    cols["item_logq/retrieval"] = logq[items]
    extras[split]["seen/retrieval"] = seen.copy()
    seen[cols["user_id"], items] = True
