"""UCI Census-Income (KDD): the MMoE paper's real benchmark, as numpy columns.

Ma et al., "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018, section 5.2:

  "We construct two multi-task learning problems from this dataset by
  setting some of the features as prediction targets ...
  (1) Task 1: Predict whether the income exceeds $50K;
      Task 2: Predict whether this person's marital status is never married.
      Absolute Pearson correlation: 0.1768.
  (2) Task 1: Predict whether the education level is at least college;
      Task 2: Predict whether this person's marital status is never married.
      Absolute Pearson correlation: 0.2373.
  In the dataset, there are 199,523 training examples and 99,762 test
  examples. We further randomly split test examples into a validation dataset
  and a test dataset by the fraction of 1:1. Note that we remove education
  and marital status from input features as they are treated as labels in
  these setups."

Task groups (`data.task_group`), all binary with BCE:
  "income_marital"    -> tasks `income` (income field is "50000+.") and
                         `marital` (marital_stat is "Never married").
  "education_marital" -> tasks `education` and `marital`.
`education` = 1 for an associate degree or higher (EDUCATION_AT_LEAST_COLLEGE:
both associate degrees, bachelors, masters, professional school, doctorate);
"Some college but no degree" is 0. The paper does not list the values; this
reading is the one that reproduces its correlation: on census-income.test the
|Pearson| of education vs never-married is 0.2376 with it (paper: 0.2373),
0.1964 with bachelors-or-higher and 0.2810 if "some college" counted.
(income vs never-married: 0.1787 here, paper 0.1768.)

Inputs, the same for both groups (38 of the 40 attributes): education and
marital_stat are removed (the paper's rule: they are labels in one group or
the other); the income label and `instance_weight` are never inputs (UCI's
census-income.names: the instance weight "should *not* be used in the
classifiers", it is a sampling weight). Of the 38, the 7 continuous ones
(DENSE_COLUMNS) are dense: log1p for the four money amounts (LOG_COLUMNS;
heavy-tailed, up to 99,999), then standardised with the mean / std of the
training split only. The 31 nominal ones (SPARSE_COLUMNS; coded integers
such as det_ind_code included) are sparse ids: per field, the values seen at
least `data.min_count` times in the training split, most frequent first, get
ids 1..V; every other value (unseen in train, or rarer) gets id 0, the OOV id;
vocab_size = V + 1. '?' (not asked / missing) is an ordinary value. Note that
det_hh_fam_stat / det_hh_summ encode "never married" for children (e.g.
"Child <18 never marr not in subfamily"): like the paper and the public
implementations we keep them, which is why `marital` AUCs are near 0.995.

Splits (`data.split_mode`):
  "official": census-income.data(.gz) is train; census-income.test(.gz) is cut
     1:1 into validation / test, as in the paper.
  "single_file": only census-income.test(.gz) (this workspace has no train
     file): it is cut 60/20/20 into train / validation / test. AUCs are then
     not comparable to published ones (about 1/3 of the training data).
  "auto" (default): "official" when the train file exists, else "single_file".
Every cut is stratified by the joint (income, never married, at least
college) labels, 8 strata, so the splits do not depend on the task group:
within each stratum (in order 0..7) the rows are permuted by
`np.random.default_rng(data.split_seed)` and cut at round(n * cumulative
fraction); each split keeps file order. The file has 883 duplicated lines, so
a few identical rows can land in different splits (as in the paper's random
cut).

Instance weights: `data.use_instance_weight` (default False) makes the train
split's "weights" the instance weights divided by their train mean; the
validation / test weights stay 1, so metrics are unweighted either way. The
raw weights are always in `extras[split]["instance_weight"]`.

Why no TFDS builder (unlike movielens.py): the columns depend on options
(task group, split mode and seed, min_count, train statistics), so TFDS could
only store the parsed raw rows, and its per-example serialisation of 100k
rows x 42 fields costs tens of seconds on a small machine (ML-100K: ~18 s)
against ~1 s to parse the gzip directly. The decoded columns are cached as
npz instead (`mtkd_jax.data.cache`), keyed by the file contents and options.

UCI lists the data under CC BY 4.0; still, keep it out of the repository:
pass its folder with DATA_DIR_FLAG.
"""
import gzip
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mtkd_jax import errors
from mtkd_jax.data import cache
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import specs

NAME = "census_income"
URL = "https://archive.ics.uci.edu/dataset/117/census+income+kdd"
TRAIN_FILE = "census-income.data"
TEST_FILE = "census-income.test"
DATA_DIR_FLAG = "--config.data.data_dir=/path/to/census-income-kdd"
# The 42 comma-separated fields of a line (keras-mmoe's names; UCI order).
COLUMNS = (
    "age", "class_worker", "det_ind_code", "det_occ_code", "education",
    "wage_per_hour", "hs_college", "marital_stat", "major_ind_code",
    "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses",
    "stock_dividends", "tax_filer_stat", "region_prev_res", "state_prev_res",
    "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp",
    "fam_under_18", "country_father", "country_mother", "country_self",
    "citizenship", "own_or_self", "vet_question", "vet_benefits",
    "weeks_worked", "year", "income_50k")
DENSE_COLUMNS = ("age", "wage_per_hour", "capital_gains", "capital_losses",
                 "stock_dividends", "num_emp", "weeks_worked")
LOG_COLUMNS = ("wage_per_hour", "capital_gains", "capital_losses",
               "stock_dividends")
LABEL_COLUMNS = ("education", "marital_stat", "income_50k")
WEIGHT_COLUMN = "instance_weight"
SPARSE_COLUMNS = tuple(c for c in COLUMNS if c not in DENSE_COLUMNS +
                       LABEL_COLUMNS + (WEIGHT_COLUMN,))
INCOME_VALUES = {"- 50000.": 0.0, "50000+.": 1.0}
NEVER_MARRIED = "Never married"
EDUCATION_VALUES = (
    "Children", "Less than 1st grade", "1st 2nd 3rd or 4th grade",
    "5th or 6th grade", "7th and 8th grade", "9th grade", "10th grade",
    "11th grade", "12th grade no diploma", "High school graduate",
    "Some college but no degree", "Associates degree-occup /vocational",
    "Associates degree-academic program", "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)", "Doctorate degree(PhD EdD)")
EDUCATION_AT_LEAST_COLLEGE = EDUCATION_VALUES[11:]
TASK_GROUPS = {"income_marital": ("income", "marital"),
               "education_marital": ("education", "marital")}
SPLIT_MODES = ("auto", "official", "single_file")
SINGLE_FILE_FRACTIONS = (0.6, 0.2, 0.2)
OFFICIAL_TEST_FRACTIONS = (0.5, 0.5)  # validation, test
SPLITS = ("train", "validation", "test")
_CACHE_FORMAT = "census-columns-v1"


# ----------------------------------------------------------------------------
# Reading the raw files.
# ----------------------------------------------------------------------------


def find_file(data_dir: pathlib.Path, name: str) -> Optional[pathlib.Path]:
  """`name` or `name.gz` in `data_dir` (the plain file first), else None."""
  for candidate in (data_dir / name, data_dir / f"{name}.gz"):
    if candidate.is_file():
      return candidate
  return None


def resolve_files(data_dir, split_mode: str
                  ) -> Tuple[Optional[pathlib.Path], pathlib.Path]:
  """(train file or None, test file) of `data_dir` for `split_mode`.

  Raises:
    MissingDataError: naming the directory, the missing files and the flag.
    ConfigError: for an unknown split_mode.
  """
  if split_mode not in SPLIT_MODES:
    raise errors.ConfigError(f"data.split_mode {split_mode!r} is not one of "
                             f"{', '.join(SPLIT_MODES)}.")
  if not str(data_dir or ""):
    raise errors.MissingDataError(
        f"Census-Income needs data.data_dir: a folder with {TEST_FILE}(.gz) "
        f"and optionally {TRAIN_FILE}(.gz) from {URL}. Pass it with "
        f"{DATA_DIR_FLAG}.")
  path = cache.resolve_dir(data_dir, "")
  train = find_file(path, TRAIN_FILE)
  test = find_file(path, TEST_FILE)
  missing = [] if test else [f"{TEST_FILE}(.gz)"]
  if split_mode == "official" and not train:
    missing.insert(0, f"{TRAIN_FILE}(.gz)")
  if missing:
    where = "exists" if path.is_dir() else "does not exist"
    needs = [f"{TEST_FILE}(.gz)"]
    if split_mode == "official":
      needs.insert(0, f"{TRAIN_FILE}(.gz)")
    raise errors.MissingDataError(
        f"Census-Income data_dir {str(path)!r} ({where}) is missing "
        f"{', '.join(missing)} (split_mode={split_mode!r} needs "
        f"{' and '.join(needs)}). Download them from {URL} and pass the "
        f"folder with {DATA_DIR_FLAG}.")
  return (train if split_mode != "single_file" else None), test


def _open_text(path: pathlib.Path):
  if path.suffix == ".gz":
    return gzip.open(path, "rt", encoding="latin-1")
  return open(path, encoding="latin-1")


def parse_file(path: pathlib.Path) -> Dict[str, np.ndarray]:
  """Reads one census-income file (42 comma-separated fields, no header).

  Returns:
    A dict with, per row in file order: every column of SPARSE_COLUMNS
    (stripped strings, dtype object), the DENSE_COLUMNS and
    "instance_weight" (float64), and the labels "income", "marital",
    "education" (float32 0/1).

  Raises:
    DataError: naming the file, line and field of a malformed line.
  """
  sparse = {c: [] for c in SPARSE_COLUMNS}
  numeric = {c: [] for c in DENSE_COLUMNS + (WEIGHT_COLUMN,)}
  labels = {"income": [], "marital": [], "education": []}
  index = {c: j for j, c in enumerate(COLUMNS)}
  edu_label = {v: float(v in EDUCATION_AT_LEAST_COLLEGE)
               for v in EDUCATION_VALUES}
  with _open_text(path) as f:
    for line_no, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      fields = [v.strip() for v in line.split(",")]
      if len(fields) != len(COLUMNS):
        raise errors.DataError(
            f"{path}:{line_no}: expected {len(COLUMNS)} comma-separated "
            f"fields, got {len(fields)}: {line[:80]!r}.")
      for c in SPARSE_COLUMNS:
        sparse[c].append(fields[index[c]])
      for c in numeric:
        value = fields[index[c]]
        try:
          numeric[c].append(float(value))
        except ValueError:
          raise errors.DataError(
              f"{path}:{line_no}: field {c!r} (column {index[c] + 1}) value "
              f"{value!r} is not a number.") from None
        if not np.isfinite(numeric[c][-1]):
          raise errors.DataError(
              f"{path}:{line_no}: field {c!r} (column {index[c] + 1}) value "
              f"{value!r} is not finite.")
      income = fields[index["income_50k"]]
      if income not in INCOME_VALUES:
        raise errors.DataError(
            f"{path}:{line_no}: field 'income_50k' (column 42) value "
            f"{income!r} is not one of {sorted(INCOME_VALUES)}.")
      education = fields[index["education"]]
      if education not in edu_label:
        raise errors.DataError(
            f"{path}:{line_no}: field 'education' (column 5) value "
            f"{education!r} is not one of the 17 UCI education values.")
      labels["income"].append(INCOME_VALUES[income])
      labels["marital"].append(float(fields[index["marital_stat"]] ==
                                     NEVER_MARRIED))
      labels["education"].append(edu_label[education])
  if not labels["income"]:
    raise errors.DataError(f"{path}: no rows.")
  out = {c: np.asarray(v, dtype=object) for c, v in sparse.items()}
  out.update({c: np.asarray(v, np.float64) for c, v in numeric.items()})
  out.update({k: np.asarray(v, np.float32) for k, v in labels.items()})
  return out


# ----------------------------------------------------------------------------
# Splitting and encoding.
# ----------------------------------------------------------------------------


def strata(rows: Dict[str, np.ndarray]) -> np.ndarray:
  """Joint label stratum 0..7: 4 income + 2 never married + 1 college."""
  return (4 * rows["income"] + 2 * rows["marital"] +
          rows["education"]).astype(np.int64)


def stratified_split(stratum: np.ndarray, fractions: Sequence[float],
                     seed: int) -> np.ndarray:
  """Part index (0..len(fractions)-1) per row, stratified by `stratum`.

  Within each stratum value, in increasing order, the rows are permuted by
  one `np.random.default_rng(seed)` and cut at round(n * cumulative fraction).
  """
  bounds = np.cumsum(fractions)
  if not np.isclose(bounds[-1], 1.0) or min(fractions) < 0:
    raise errors.ConfigError(f"Split fractions {tuple(fractions)} must be >= 0 "
                             "and sum to 1.")
  rng = np.random.default_rng(seed)
  part = np.empty(len(stratum), np.int8)
  for value in np.unique(stratum):
    rows = np.flatnonzero(stratum == value)
    rows = rows[rng.permutation(len(rows))]
    cuts = np.round(bounds * len(rows)).astype(np.int64)
    start = 0
    for k, stop in enumerate(cuts):
      part[rows[start:stop]] = k
      start = stop
  return part


def _take(rows: Dict[str, np.ndarray], keep: np.ndarray):
  return {k: v[keep] for k, v in rows.items()}


def split_rows(train_rows, test_rows, seed: int) -> Dict[str, dict]:
  """The train / validation / test rows (see the module docstring)."""
  if train_rows is not None:
    part = stratified_split(strata(test_rows), OFFICIAL_TEST_FRACTIONS, seed)
    return {"train": train_rows,
            "validation": _take(test_rows, part == 0),
            "test": _take(test_rows, part == 1)}
  part = stratified_split(strata(test_rows), SINGLE_FILE_FRACTIONS, seed)
  return {name: _take(test_rows, part == k) for k, name in enumerate(SPLITS)}


def build_vocab(values: np.ndarray, min_count: int) -> List[str]:
  """Values seen >= min_count times, most frequent first (ties by value)."""
  uniq, counts = np.unique(values.astype(str), return_counts=True)
  order = sorted(range(len(uniq)), key=lambda i: (-counts[i], uniq[i]))
  return [str(uniq[i]) for i in order if counts[i] >= min_count]


def encode(values: np.ndarray, vocab: Sequence[str]) -> np.ndarray:
  """Ids 1..len(vocab) for vocabulary values, 0 (OOV) for the rest."""
  lookup = {v: i + 1 for i, v in enumerate(vocab)}
  return np.fromiter((lookup.get(v, 0) for v in values), np.int32,
                     count=len(values))


def dense_features(rows) -> np.ndarray:
  """float64[N, 7] of DENSE_COLUMNS, log1p for LOG_COLUMNS (unstandardised)."""
  cols = []
  for c in DENSE_COLUMNS:
    x = rows[c]
    if c in LOG_COLUMNS:
      if (x < 0).any():
        row = int(np.argmax(x < 0))
        raise errors.DataError(f"field {c!r} has negative value {x[row]} at "
                               f"row {row}; expected an amount >= 0.")
      x = np.log1p(x)
    cols.append(x)
  return np.stack(cols, axis=1)


def encode_splits(split_rows_: Dict[str, dict], min_count: int):
  """Columns of every split (all three labels) and the metadata.

  Vocabularies and dense statistics come from the train rows only. "weights"
  are ones; "instance_weight" holds the raw instance weights.
  """
  train = split_rows_["train"]
  vocabs = {c: build_vocab(train[c], min_count) for c in SPARSE_COLUMNS}
  train_dense = dense_features(train)
  mean = train_dense.mean(axis=0)
  std = train_dense.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  out = {}
  for split in SPLITS:
    rows = split_rows_[split]
    n = len(rows["income"])
    out[split] = {
        "sparse": np.stack([encode(rows[c], vocabs[c])
                            for c in SPARSE_COLUMNS], axis=1).reshape(n, -1),
        "dense": ((dense_features(rows) - mean) / std).astype(np.float32),
        "labels/income": rows["income"],
        "labels/marital": rows["marital"],
        "labels/education": rows["education"],
        "weights": np.ones(n, np.float32),
        "instance_weight": rows[WEIGHT_COLUMN].astype(np.float32),
    }
  metadata = {
      "vocab_sizes": {c: len(vocabs[c]) + 1 for c in SPARSE_COLUMNS},
      "vocabs": vocabs,
      "dense_mean": mean.tolist(),
      "dense_std": std.tolist(),
      "train_instance_weight_mean": float(train[WEIGHT_COLUMN].mean()),
  }
  return out, metadata


# ----------------------------------------------------------------------------
# Loading into the batch layout.
# ----------------------------------------------------------------------------


def make_spec(metadata, task_group: str, embed_dim: int = 16
              ) -> specs.DatasetSpec:
  vocab = metadata["vocab_sizes"]
  return specs.DatasetSpec(
      name=NAME,
      sparse=tuple(specs.SparseField(c, int(vocab[c]), embed_dim)
                   for c in SPARSE_COLUMNS),
      dense=tuple(specs.DenseField(c) for c in DENSE_COLUMNS),
      tasks=tuple(specs.TaskSpec(t, "binary", "bce")
                  for t in TASK_GROUPS[task_group]))


def load(cfg) -> specs.Splits:
  """Loads Census-Income (KDD) as numpy columns in the batch layout.

  Args:
    cfg: a ConfigDict (or any object with attributes) with
      data_dir: the folder with census-income.test(.gz) (and, for the
        official split, census-income.data(.gz)). Required.
      task_group: "income_marital" (default) or "education_marital".
      split_mode: "auto" (default), "official" or "single_file".
      split_seed: seed of the stratified cuts (default 0).
      min_count: train occurrences a value needs for its own id (default 5).
      use_instance_weight: weight train rows by instance weight (default
        False).
      cache_dir: where the columns are cached ('' -> ~/.cache/mtkd_jax/
        columns).
      max_examples: 0 for all; else train keeps its first max_examples rows
        and validation / test their first max(1, max_examples // 4).
      embed_dim: the embedding width put in the spec (default 16).

  Returns:
    `specs.Splits` whose splits hold "sparse" int32[N, 31] (SPARSE_COLUMNS),
    "dense" float32[N, 7] (DENSE_COLUMNS), "labels/<task>" for the two tasks
    of the group, "weights"; `extras[split]` holds "instance_weight" and the
    label of the third task.
  """
  task_group = cache.get_option(cfg, "task_group", "income_marital")
  if task_group not in TASK_GROUPS:
    raise errors.ConfigError(f"data.task_group {task_group!r} is not one of "
                             f"{', '.join(TASK_GROUPS)}.")
  split_mode = cache.get_option(cfg, "split_mode", "auto")
  seed = int(cache.get_option(cfg, "split_seed", 0))
  min_count = int(cache.get_option(cfg, "min_count", 5))
  if min_count < 1:
    raise errors.ConfigError(f"data.min_count must be >= 1, got {min_count}.")
  use_weight = bool(cache.get_option(cfg, "use_instance_weight", False))
  max_examples = int(cache.get_option(cfg, "max_examples", 0))
  embed_dim = int(cache.get_option(cfg, "embed_dim", 16))
  cache_dir = cache.resolve_dir(cache.get_option(cfg, "cache_dir", ""),
                                cache.DEFAULT_CACHE_DIR)

  train_file, test_file = resolve_files(
      cache.get_option(cfg, "data_dir", ""), split_mode)
  files = [f for f in (train_file, test_file) if f is not None]
  key = cache.cache_key(_CACHE_FORMAT, cache.fingerprint(files),
                        [f.name for f in files], seed, min_count)
  path = cache.cache_path(cache_dir, NAME, key)
  cached = cache.load(path)
  if cached is None:
    train_rows = parse_file(train_file) if train_file else None
    rows = split_rows(train_rows, parse_file(test_file), seed)
    cols, metadata = encode_splits(rows, min_count)
    metadata["mode"] = "official" if train_file else "single_file"
    cache.save(path, cols, metadata)
  else:
    cols, metadata = cached

  spec = make_spec(metadata, task_group, embed_dim)
  tasks = TASK_GROUPS[task_group]
  splits, extras = {}, {}
  for split in SPLITS:
    c = dict(cols[split])
    if max_examples > 0:
      c = cache.head(c, max_examples if split == "train"
                     else max(1, max_examples // 4))
    extras[split] = {"instance_weight": c.pop("instance_weight")}
    if use_weight and split == "train":
      c["weights"] = (extras[split]["instance_weight"] /
                      metadata["train_instance_weight_mean"]).astype(np.float32)
    for task in ("income", "marital", "education"):
      if task not in tasks:
        extras[split][f"labels/{task}"] = c.pop(f"labels/{task}")
    columns_lib.validate_columns(spec, c, split)
    splits[split] = c
  return specs.Splits(spec=spec, extras=extras, **splits)
