"""Ali-CCP and AliExpress in their public preprocessed CSV formats.

Both are click / conversion logs from Alibaba, used by ESMM (Ali-CCP), PLE,
AITM and MTReclib (AliExpress). The loaders read the CSVs as the open-source
libraries distribute them and produce two binary tasks over the impression
space, so ESMM-style models (pCTCVR = pCTR * pCVR) can train on them:
  ctr   = click
  ctcvr = click AND purchase (conversion).
A purchase without a click is a malformed row (DataError naming file, line
and field): both formats already exclude it (Ali-CCP's preprocessing drops
such rows; AliExpress encodes its label 0 / 1 / 2 as none / click / click +
conversion), so ctcvr equals the purchase column.

Ali-CCP (`load_aliccp`, dataset "ali_ccp"; Tianchi dataset 408): torch-rechub's
`preprocess_ali_ccp.py` output, `ali_ccp_train.csv`, `ali_ccp_val.csv`,
`ali_ccp_test.csv` (its 1:1 random cut of the official test set), or the
`ali_ccp_{train,val,test}_sample.csv` samples it ships. 33 columns:
`click, purchase`, 23 sparse id fields (ALICCP_SPARSE: `101` ... `301`,
`109_14` ... `150_14`, already label-encoded, 0 = rare / missing) and 8 dense
ones (ALICCP_DENSE: `D109_14` ... `D853`, already min-max scaled to [0, 1]).
The three files are the three splits.

AliExpress (`load_aliexpress`, dataset "aliexpress"; Tianchi dataset 74690):
MTReclib's per-country `train.csv` / `test.csv` (folders AliExpress_NL, _ES,
_FR, _US made by its `data/preprocess.py`), or torch-rechub's
`aliexpress_{train,test}_sample.csv`. 82 columns: `search_id`,
`categorical_1..16`, `numerical_1..63` (already normalised), `click`,
`conversion`. `search_id` (the page-view join key) is not an input. test.csv
is the test split; validation is held out of train.csv by search id: a
seeded random `round(data.val_fraction * G)` (at least 1) of its G distinct
search ids, with all their rows (MTReclib early-stops on the test set
instead; this keeps test untouched). `extras[split]["search_id"]` keeps them.

Common rules: sparse ids are used as they are (ids must be integers >= 0);
vocab_size = 1 + the largest id of the field over all files (the ids were
encoded upstream from the training data, so this only sizes the table; ids
never seen in training keep their initial embedding). Dense values are used
as they are (the formats are already scaled). max_examples keeps the first
rows of each split (train: max_examples, validation / test: max(1,
max_examples // 4)).

Why no TFDS builder: full Ali-CCP has ~85M rows; TFDS's per-example Python
serialisation would take hours and store a second copy. The CSVs are parsed
in chunks with numpy's C `loadtxt` (a malformed chunk is re-read line by line
for the error message) and the columns cached as npz (`mtkd_jax.data.cache`;
files over 256 MiB are fingerprinted by size and mtime, not content). Peak
memory is about twice the decoded columns.

The data keep Tianchi's terms (research, non-commercial, no redistribution):
pass a local folder with the flags below; never copy it into the repository.
"""
import dataclasses
import itertools
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mtkd_jax import errors
from mtkd_jax.data import cache
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import specs

SPLITS = ("train", "validation", "test")
TASKS = (specs.TaskSpec("ctr", "binary", "bce"),
         specs.TaskSpec("ctcvr", "binary", "bce"))
CHUNK_LINES = 1 << 18
_CACHE_FORMAT = "ali-columns-v1"
_MAX_ID = np.iinfo(np.int32).max - 1

ALICCP_NAME = "ali_ccp"
ALICCP_FLAG = "--config.data.data_dir=/path/to/ali-ccp"
ALICCP_URL = "https://tianchi.aliyun.com/dataset/408"
ALICCP_SPARSE = ("101", "121", "122", "124", "125", "126", "127", "128", "129",
                 "205", "206", "207", "210", "216", "508", "509", "702", "853",
                 "301", "109_14", "110_14", "127_14", "150_14")
ALICCP_DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509",
                "D702", "D853")
ALICCP_FILES = (("ali_ccp_train.csv", "ali_ccp_val.csv", "ali_ccp_test.csv"),
                ("ali_ccp_train_sample.csv", "ali_ccp_val_sample.csv",
                 "ali_ccp_test_sample.csv"))

ALIEXPRESS_NAME = "aliexpress"
ALIEXPRESS_FLAG = "--config.data.data_dir=/path/to/AliExpress_US"
ALIEXPRESS_URL = "https://tianchi.aliyun.com/dataset/74690"
ALIEXPRESS_SPARSE = tuple(f"categorical_{i}" for i in range(1, 17))
ALIEXPRESS_DENSE = tuple(f"numerical_{i}" for i in range(1, 64))
ALIEXPRESS_FILES = (("train.csv", "test.csv"),
                    ("aliexpress_train_sample.csv",
                     "aliexpress_test_sample.csv"))


@dataclasses.dataclass(frozen=True)
class CsvSchema:
  """A numeric CSV with a header.

  Attributes:
    header: the exact column names of line 1.
    int_columns: columns holding integers >= 0 (ids and labels).
    binary_columns: columns holding 0 or 1.
    implies: (a, b) pairs: a row with a = 1 must have b = 1.
  """
  header: Tuple[str, ...]
  int_columns: Tuple[str, ...]
  binary_columns: Tuple[str, ...]
  implies: Tuple[Tuple[str, str], ...] = ()


ALICCP_SCHEMA = CsvSchema(
    header=("click", "purchase") + ALICCP_SPARSE + ALICCP_DENSE,
    int_columns=("click", "purchase") + ALICCP_SPARSE,
    binary_columns=("click", "purchase"),
    implies=(("purchase", "click"),))
ALIEXPRESS_SCHEMA = CsvSchema(
    header=(("search_id",) + ALIEXPRESS_SPARSE + ALIEXPRESS_DENSE +
            ("click", "conversion")),
    int_columns=("search_id",) + ALIEXPRESS_SPARSE + ("click", "conversion"),
    binary_columns=("click", "conversion"),
    implies=(("conversion", "click"),))


# ----------------------------------------------------------------------------
# Reading CSVs.
# ----------------------------------------------------------------------------


def find_files(data_dir, candidates: Sequence[Sequence[str]], what: str,
               flag: str, url: str) -> List[pathlib.Path]:
  """The first set of `candidates` all present in `data_dir`.

  Raises:
    MissingDataError: naming the directory, the missing files of the first
      (full-data) set, the accepted sample names and the flag.
  """
  if not str(data_dir or ""):
    raise errors.MissingDataError(
        f"{what} needs data.data_dir: a folder with "
        f"{', '.join(candidates[0])} (from {url}). Pass it with {flag}.")
  path = cache.resolve_dir(data_dir, "")
  for names in candidates:
    if all((path / n).is_file() for n in names):
      return [path / n for n in names]
  missing = [n for n in candidates[0] if not (path / n).is_file()]
  where = "exists" if path.is_dir() else "does not exist"
  alternatives = "; or ".join(", ".join(c) for c in candidates[1:])
  raise errors.MissingDataError(
      f"{what} data_dir {str(path)!r} ({where}) is missing "
      f"{', '.join(missing)} (needs {', '.join(candidates[0])}; or "
      f"{alternatives}). Pass the folder with {flag}.")


def _row_problem(values: List[str], schema: CsvSchema) -> Optional[str]:
  """What is wrong with one split line (None if nothing)."""
  if len(values) != len(schema.header):
    return (f"expected {len(schema.header)} comma-separated fields, got "
            f"{len(values)}")
  parsed = {}
  for name, value in zip(schema.header, values):
    try:
      x = float(value)
    except ValueError:
      return f"field {name!r} value {value!r} is not a number"
    if not np.isfinite(x):
      return f"field {name!r} value {value!r} is not finite"
    if name in schema.int_columns and (x != int(x) or x < 0 or x > _MAX_ID):
      return f"field {name!r} value {value!r} is not an integer id >= 0"
    if name in schema.binary_columns and x not in (0.0, 1.0):
      return f"field {name!r} value {value!r} is not 0 or 1"
    parsed[name] = x
  for a, b in schema.implies:
    if parsed[a] == 1 and parsed[b] != 1:
      other = values[schema.header.index(b)]
      return f"field {a!r} is 1 but field {b!r} is {other!r}"
  return None


def _raise_first_problem(path, lines: List[str], first_line_no: int,
                         schema: CsvSchema) -> None:
  for offset, line in enumerate(lines):
    line = line.rstrip("\r\n")
    if not line.strip():
      continue
    problem = _row_problem(line.split(","), schema)
    if problem:
      raise errors.DataError(f"{path}:{first_line_no + offset}: {problem}: "
                             f"{line[:80]!r}.")


def _block_ok(block: np.ndarray, schema: CsvSchema) -> bool:
  """Vectorised version of `_row_problem` over a parsed block."""
  if block.shape[1] != len(schema.header) or not np.isfinite(block).all():
    return False
  col = {n: block[:, j] for j, n in enumerate(schema.header)}
  for name in schema.int_columns:
    x = col[name]
    if ((x != np.floor(x)) | (x < 0) | (x > _MAX_ID)).any():
      return False
  for name in schema.binary_columns:
    if ((col[name] != 0) & (col[name] != 1)).any():
      return False
  for a, b in schema.implies:
    if ((col[a] == 1) & (col[b] != 1)).any():
      return False
  return True


def read_csv(path: pathlib.Path, schema: CsvSchema) -> Dict[str, np.ndarray]:
  """Reads a numeric CSV: int64 for `int_columns`, float32 for the others.

  Raises:
    DataError: naming the file, line and field of the first bad line (wrong
      header, field count, a non-number, a bad id or label).
  """
  chunks = []
  with open(path, encoding="utf-8", newline="") as f:
    header = tuple(f.readline().rstrip("\r\n").split(","))
    if header != schema.header:
      diff = [f"column {j + 1} is {h!r}, expected {e!r}"
              for j, (h, e) in enumerate(zip(header, schema.header)) if h != e]
      if len(header) != len(schema.header):
        diff.insert(0, f"{len(header)} columns, expected "
                    f"{len(schema.header)}")
      raise errors.DataError(f"{path}:1: unexpected header: "
                             f"{'; '.join(diff[:3])}.")
    line_no = 2
    while True:
      lines = list(itertools.islice(f, CHUNK_LINES))
      if not lines:
        break
      if any(line.strip() for line in lines):
        try:
          block = np.loadtxt(lines, delimiter=",", dtype=np.float64,
                             ndmin=2, comments=None)
        except ValueError:
          block = None
        if block is None or not _block_ok(block, schema):
          _raise_first_problem(path, lines, line_no, schema)
          raise errors.DataError(f"{path}:{line_no}: unparseable lines "
                                 f"{line_no}..{line_no + len(lines) - 1}.")
        chunks.append(block)
      line_no += len(lines)
  if not chunks:
    raise errors.DataError(f"{path}: no data rows after the header.")
  data = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
  return {name: (data[:, j].astype(np.int64) if name in schema.int_columns
                 else data[:, j].astype(np.float32))
          for j, name in enumerate(schema.header)}


# ----------------------------------------------------------------------------
# Encoding.
# ----------------------------------------------------------------------------


def to_columns(raw: Dict[str, np.ndarray], sparse: Sequence[str],
               dense: Sequence[str], conversion: str) -> Dict[str, np.ndarray]:
  """Raw CSV columns -> batch-layout columns (labels ctr, ctcvr)."""
  n = len(raw["click"])
  click = raw["click"].astype(np.float32)
  return {
      "sparse": np.stack([raw[c] for c in sparse], axis=1).astype(
          np.int32).reshape(n, -1),
      "dense": np.stack([raw[c] for c in dense], axis=1).astype(
          np.float32).reshape(n, -1),
      "labels/ctr": click,
      "labels/ctcvr": click * raw[conversion].astype(np.float32),
      "weights": np.ones(n, np.float32),
  }


def vocab_sizes(split_cols: Dict[str, Dict[str, np.ndarray]],
                sparse: Sequence[str]) -> Dict[str, int]:
  """1 + the largest id of each sparse field over all splits."""
  top = np.max(np.stack([c["sparse"].max(axis=0) for c in split_cols.values()
                         if len(c["sparse"])]), axis=0)
  return {name: int(v) + 1 for name, v in zip(sparse, top)}


def make_spec(name: str, metadata, sparse, dense,
              embed_dim: int) -> specs.DatasetSpec:
  vocab = metadata["vocab_sizes"]
  return specs.DatasetSpec(
      name=name,
      sparse=tuple(specs.SparseField(c, int(vocab[c]), embed_dim)
                   for c in sparse),
      dense=tuple(specs.DenseField(c) for c in dense),
      tasks=TASKS)


def group_holdout(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """bool per row: in a held-out random round(fraction * G) (>= 1) of groups.

  Raises:
    ConfigError: for a fraction outside (0, 1).
    DataError: with fewer than 2 distinct groups.
  """
  if not 0 < fraction < 1:
    raise errors.ConfigError(f"data.val_fraction must be in (0, 1), got "
                             f"{fraction}.")
  uniq = np.unique(groups)
  if len(uniq) < 2:
    raise errors.DataError(f"train has {len(uniq)} distinct search_id; at "
                           "least 2 are needed to hold out a validation split.")
  k = min(len(uniq) - 1, max(1, int(round(fraction * len(uniq)))))
  held = uniq[np.random.default_rng(seed).permutation(len(uniq))[:k]]
  return np.isin(groups, held)


def _finish(name, cols, metadata, sparse, dense, cfg, extras_cols=()):
  """Spec, max_examples, extras and validation of cached columns."""
  max_examples = int(cache.get_option(cfg, "max_examples", 0))
  embed_dim = int(cache.get_option(cfg, "embed_dim", 16))
  spec = make_spec(name, metadata, sparse, dense, embed_dim)
  splits, extras = {}, {}
  for split in SPLITS:
    c = dict(cols[split])
    if max_examples > 0:
      c = cache.head(c, max_examples if split == "train"
                     else max(1, max_examples // 4))
    extras[split] = {k: c.pop(k) for k in extras_cols}
    columns_lib.validate_columns(spec, c, split)
    splits[split] = c
  return specs.Splits(spec=spec, extras=extras, **splits)


def _cache_dir(cfg) -> pathlib.Path:
  return cache.resolve_dir(cache.get_option(cfg, "cache_dir", ""),
                           cache.DEFAULT_CACHE_DIR)


# ----------------------------------------------------------------------------
# Loaders.
# ----------------------------------------------------------------------------


def load_aliccp(cfg) -> specs.Splits:
  """Loads Ali-CCP (torch-rechub CSVs) as numpy columns in the batch layout.

  Args:
    cfg: a ConfigDict (or any object with attributes) with
      data_dir: the folder with ali_ccp_{train,val,test}.csv (or the
        *_sample.csv files). Required.
      cache_dir: where the columns are cached ('' -> ~/.cache/mtkd_jax/
        columns).
      max_examples, embed_dim: see the module docstring (default 0, 16).

  Returns:
    `specs.Splits` whose splits hold "sparse" int32[N, 23], "dense"
    float32[N, 8], "labels/ctr", "labels/ctcvr", "weights".
  """
  files = find_files(cache.get_option(cfg, "data_dir", ""), ALICCP_FILES,
                     "Ali-CCP", ALICCP_FLAG, ALICCP_URL)
  key = cache.cache_key(_CACHE_FORMAT, ALICCP_NAME, cache.fingerprint(files),
                        [f.name for f in files])
  path = cache.cache_path(_cache_dir(cfg), ALICCP_NAME, key)
  cached = cache.load(path)
  if cached is None:
    cols = {split: to_columns(read_csv(f, ALICCP_SCHEMA), ALICCP_SPARSE,
                              ALICCP_DENSE, "purchase")
            for split, f in zip(SPLITS, files)}
    metadata = {"vocab_sizes": vocab_sizes(cols, ALICCP_SPARSE),
                "files": [f.name for f in files]}
    cache.save(path, cols, metadata)
  else:
    cols, metadata = cached
  return _finish(ALICCP_NAME, cols, metadata, ALICCP_SPARSE, ALICCP_DENSE,
                 cfg)


def load_aliexpress(cfg) -> specs.Splits:
  """Loads one AliExpress country (MTReclib CSVs) in the batch layout.

  Args:
    cfg: a ConfigDict (or any object with attributes) with
      data_dir: the country folder with train.csv and test.csv (or the
        aliexpress_{train,test}_sample.csv files). Required.
      val_fraction: share of train's search ids held out (default 0.1).
      split_seed: seed of that hold-out (default 0).
      cache_dir, max_examples, embed_dim: as for `load_aliccp`.

  Returns:
    `specs.Splits` whose splits hold "sparse" int32[N, 16], "dense"
    float32[N, 63], "labels/ctr", "labels/ctcvr", "weights";
    `extras[split]["search_id"]` int64[N].
  """
  files = find_files(cache.get_option(cfg, "data_dir", ""), ALIEXPRESS_FILES,
                     "AliExpress", ALIEXPRESS_FLAG, ALIEXPRESS_URL)
  val_fraction = float(cache.get_option(cfg, "val_fraction", 0.1))
  seed = int(cache.get_option(cfg, "split_seed", 0))
  key = cache.cache_key(_CACHE_FORMAT, ALIEXPRESS_NAME,
                        cache.fingerprint(files), [f.name for f in files],
                        val_fraction, seed)
  path = cache.cache_path(_cache_dir(cfg), ALIEXPRESS_NAME, key)
  cached = cache.load(path)
  if cached is None:
    train_raw, test_raw = (read_csv(f, ALIEXPRESS_SCHEMA) for f in files)
    held = group_holdout(train_raw["search_id"], val_fraction, seed)
    raws = {"train": {k: v[~held] for k, v in train_raw.items()},
            "validation": {k: v[held] for k, v in train_raw.items()},
            "test": test_raw}
    cols = {}
    for split, raw in raws.items():
      cols[split] = to_columns(raw, ALIEXPRESS_SPARSE, ALIEXPRESS_DENSE,
                               "conversion")
      cols[split]["search_id"] = raw["search_id"]
    metadata = {"vocab_sizes": vocab_sizes(cols, ALIEXPRESS_SPARSE),
                "files": [f.name for f in files]}
    cache.save(path, cols, metadata)
  else:
    cols, metadata = cached
  return _finish(ALIEXPRESS_NAME, cols, metadata, ALIEXPRESS_SPARSE,
                 ALIEXPRESS_DENSE, cfg, extras_cols=("search_id",))
