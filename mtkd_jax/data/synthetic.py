"""Synthetic multi-task data sets whose hidden model is known.

Two generators, each deterministic by seed:

* `generate_ctr`: a Criteo-shaped click / conversion data set (Zipf-skewed
  categorical ids, Gaussian dense features, two binary tasks) drawn from a
  hidden tanh network, like the benchmark workload in
  `shared/bench/make_bench_data.py`. It also returns the hidden model's
  probabilities, i.e. the Bayes-optimal predictor, so a trained model can be
  scored against the ceiling. `task_correlation` sets how related the tasks are.
* `generate_mmoe_regression`: the two-task regression data of the MMoE paper
  (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning
  with Multi-gate Mixture-of-Experts", section 3.2), whose task relatedness is
  set by the cosine `correlation` of the two tasks' weight vectors.

`load_synthetic_ctr` and `load_mmoe_synthetic` wrap them into `specs.Splits`.
Rows are i.i.d. given the seed, so the splits are positional: the first rows
are train, then validation, then test, and all splits share one hidden model.
"""
import dataclasses
from typing import Dict, Tuple

import numpy as np
from scipy import optimize
from scipy import special

from mtkd_jax import errors
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import specs

# Hidden CTR model, as in shared/bench/make_bench_data.py.
HIDDEN_EMBED_DIM = 8    # width of the hidden per-(field, id) embedding tables
SHARED_UNITS = 32       # width of the shared tanh layer z_s
TASK_UNITS = 16         # width of each task-specific tanh layer z_c, z_v
SHARED_SCALE = 1.0      # a: weight of the shared component in each logit
SPECIFIC_SCALE = 0.7    # weight of the task-specific component in each logit
DENSE_SCALE = 2.0       # dense features enter the hidden model as 2 * dense
CTR_RATE = 0.24         # default positive rate of `ctr`
CVR_RATE = 0.12         # default positive rate of `cvr`
# Rows generated at a time (bounds memory) and rows of the calibration sample
# that fixes the hidden model's standardisation and biases. Changing either
# changes the data drawn for a seed.
CHUNK_ROWS = 65_536
CALIBRATION_ROWS = 65_536

CTR_TASKS = ("ctr", "cvr")
MMOE_TASKS = ("y1", "y2")


# --------------------------------------------------------------------------
# Synthetic CTR / CVR data.
# --------------------------------------------------------------------------


def zipf_probs(vocab_size: int, exponent: float) -> np.ndarray:
  """Truncated Zipf law over ranks 0..vocab_size-1.

  Args:
    vocab_size: number of ranks V.
    exponent: s in P(k) ∝ (k + 1)^-s.

  Returns:
    float64[V], P(rank k), decreasing in k and summing to 1.
  """
  p = np.arange(1, vocab_size + 1, dtype=np.float64) ** (-exponent)
  return p / p.sum()


@dataclasses.dataclass(frozen=True)
class _CtrHiddenModel:
  """The hidden model behind `generate_ctr` (F fields, V ids, H = 8).

  Attributes:
    cdf: float64[V], cumulative Zipf probabilities over ranks.
    perms: int32[F, V], per-field map from rank to id.
    tables: float32[F * V, H], hidden embedding of (field f, id i) at row
      f * V + i.
    hidden_w: float32[d_in, 64], input weights of the 32 shared, 16 ctr and
      16 cvr tanh units, d_in = F * H + D.
    readout: float64[64, 4], columns read out s_c = z_s u_c, s_v = z_s u_v,
      t_c = z_c v_c, t_v = z_v v_v from the 64 tanh units.
    mean: float64[4], the means of (s_c, s_v, t_c, t_v) (calibration sample).
    std: float64[4], their standard deviations (calibration sample).
    bias: float64[2], the logit biases (b_c, b_v).
  """
  cdf: np.ndarray
  perms: np.ndarray
  tables: np.ndarray
  hidden_w: np.ndarray
  readout: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  bias: np.ndarray


def _sample_inputs(rng, cdf, perms, num_rows, num_dense):
  """Draws ids and dense features.

  Args:
    rng: np.random.Generator.
    cdf: float64[V], cumulative rank probabilities.
    perms: int32[F, V], per-field rank -> id maps.
    num_rows: N.
    num_dense: D.

  Returns:
    (sparse int32[N, F], dense float32[N, D]).
  """
  num_fields, vocab_size = perms.shape
  u = rng.random((num_rows, num_fields))
  ranks = np.minimum(np.searchsorted(cdf, u, side="right"), vocab_size - 1)
  sparse = perms[np.arange(num_fields)[None, :], ranks]
  dense = rng.standard_normal((num_rows, num_dense), dtype=np.float32)
  return sparse, dense


def _hidden_units(tables, hidden_w, sparse, dense):
  """The 64 tanh units of the hidden model.

  Args:
    tables: float32[F * V, H].
    hidden_w: float32[F * H + D, 64].
    sparse: int32[N, F].
    dense: float32[N, D].

  Returns:
    float32[N, 64]: [z_s (32), z_c (16), z_v (16)].
  """
  num_rows, num_fields = sparse.shape
  vocab_size = tables.shape[0] // max(num_fields, 1)
  offsets = np.arange(num_fields, dtype=np.int64) * vocab_size
  emb = tables[sparse + offsets[None, :]].reshape(
      num_rows, num_fields * tables.shape[1])
  x = np.concatenate([emb, DENSE_SCALE * dense], axis=1)
  return np.tanh(x @ hidden_w)


def _logits(model, units):
  """Logits of (ctr, cvr), float64[N, 2], from float32[N, 64] tanh units."""
  comp = (units.astype(np.float64) @ model.readout - model.mean) / model.std
  shared, specific = comp[:, :2], comp[:, 2:]
  return model.bias + SHARED_SCALE * shared + SPECIFIC_SCALE * specific


def _decorrelated_noise(noise, units, u_c, v_c, v_v):
  """Turns `noise` into a shared read-out that is uncorrelated with the rest.

  Returns n with Var(z_s n) = Var(z_s u_c) and z_s n uncorrelated with
  z_s u_c, z_c v_c and z_v v_v over the sample, so that u_v = rho u_c +
  sqrt(1 - rho^2) n gives Corr(z_s u_c, z_s u_v) = rho and Var(z_s u_v) =
  Var(z_s u_c) for every rho.

  Args:
    noise: float64[32], a random direction.
    units: float64[M, 64], centred tanh units of a calibration sample.
    u_c, v_c, v_v: float64[32], [16], [16] read-outs.

  Returns:
    float64[32].
  """
  z_s = units[:, :SHARED_UNITS]
  t_c = units[:, SHARED_UNITS:SHARED_UNITS + TASK_UNITS] @ v_c
  t_v = units[:, SHARED_UNITS + TASK_UNITS:] @ v_v
  cov = z_s.T @ z_s / len(z_s)
  constraints = np.stack([cov @ u_c, z_s.T @ t_c, z_s.T @ t_v], axis=1)
  q, _ = np.linalg.qr(constraints)
  n = noise - q @ (q.T @ noise)
  return n * np.sqrt((u_c @ cov @ u_c) / (n @ cov @ n))


def _solve_bias(rest, rate):
  """The b with mean(sigmoid(b + rest)) = rate, rest float64[M]."""
  return optimize.brentq(
      lambda b: special.expit(b + rest).mean() - rate, -30.0, 30.0, xtol=1e-10)


def _build_ctr_model(model_rng, calib_rng, *, num_sparse, num_dense,
                     vocab_size, zipf_exponent, task_correlation, rates):
  """Draws the hidden model and fixes its standardisation and biases.

  Args:
    model_rng: np.random.Generator for the model's parameters.
    calib_rng: np.random.Generator for the calibration sample.
    num_sparse, num_dense, vocab_size, zipf_exponent, task_correlation: see
      `generate_ctr`.
    rates: (ctr rate, cvr rate).

  Returns:
    _CtrHiddenModel.
  """
  cdf = np.cumsum(zipf_probs(vocab_size, zipf_exponent))
  perms = np.array([model_rng.permutation(vocab_size)
                    for _ in range(num_sparse)],
                   dtype=np.int32).reshape(num_sparse, vocab_size)
  tables = model_rng.standard_normal(
      (num_sparse * vocab_size, HIDDEN_EMBED_DIM), dtype=np.float32)
  d_in = num_sparse * HIDDEN_EMBED_DIM + num_dense
  num_units = SHARED_UNITS + 2 * TASK_UNITS
  hidden_w = (model_rng.standard_normal((d_in, num_units)) /
              np.sqrt(d_in)).astype(np.float32)
  u_c = model_rng.standard_normal(SHARED_UNITS)
  noise = model_rng.standard_normal(SHARED_UNITS)
  v_c = model_rng.standard_normal(TASK_UNITS)
  v_v = model_rng.standard_normal(TASK_UNITS)

  sparse, dense = _sample_inputs(calib_rng, cdf, perms, CALIBRATION_ROWS,
                                 num_dense)
  units = _hidden_units(tables, hidden_w, sparse, dense).astype(np.float64)
  unit_mean = units.mean(axis=0)
  units -= unit_mean
  rho = task_correlation
  u_v = rho * u_c + np.sqrt(1.0 - rho**2) * _decorrelated_noise(
      noise, units, u_c, v_c, v_v)

  readout = np.zeros((num_units, 4))
  readout[:SHARED_UNITS, 0] = u_c
  readout[:SHARED_UNITS, 1] = u_v
  readout[SHARED_UNITS:SHARED_UNITS + TASK_UNITS, 2] = v_c
  readout[SHARED_UNITS + TASK_UNITS:, 3] = v_v
  comp = units @ readout   # centred, since the units are
  std = comp.std(axis=0)
  comp /= std
  rest = SHARED_SCALE * comp[:, :2] + SPECIFIC_SCALE * comp[:, 2:]
  bias = np.array([_solve_bias(rest[:, k], rates[k]) for k in range(2)])
  return _CtrHiddenModel(cdf=cdf, perms=perms, tables=tables,
                         hidden_w=hidden_w, readout=readout,
                         mean=unit_mean @ readout, std=std, bias=bias)


def generate_ctr(
    num_examples: int,
    *,
    seed: int,
    num_sparse: int = 26,
    num_dense: int = 13,
    vocab_size: int = 10_000,
    zipf_exponent: float = 1.1,
    task_correlation: float = 0.6,
    ctr_rate: float = CTR_RATE,
    cvr_rate: float = CVR_RATE,
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """Draws a two-task (ctr, cvr) click data set from a known hidden model.

  Inputs: each of F sparse fields draws a rank k in 0..V-1 from a truncated
  Zipf law, P(k) ∝ (k + 1)^-zipf_exponent (inverse CDF), and maps it to an id
  through a per-field random permutation, so hot ids are spread over the id
  space (at the defaults ~15% of rows hit a field's top id). Dense features
  are i.i.d. N(0, 1).

  Hidden model (as in shared/bench/make_bench_data.py): an 8-d N(0, 1) table
  per (field, id); x = [F embeddings, 2 * dense]; z_s = tanh(x W_s) (32 shared
  units), z_c, z_v = tanh(x W_c), tanh(x W_v) (16 units per task);
    logit_ctr = b_c + 1.0 std(z_s u_c) + 0.7 std(z_c v_c)
    logit_cvr = b_v + 1.0 std(z_s u_v) + 0.7 std(z_v v_v)
  with u_v = rho u_c + sqrt(1 - rho^2) n, rho = task_correlation. The noise
  direction n is drawn at random and then made (over a calibration sample)
  uncorrelated with z_s u_c, z_c v_c and z_v v_v, with z_s n as variable as
  z_s u_c; hence Corr(z_s u_c, z_s u_v) = rho exactly on that sample, and the
  logit correlation, about (rho + cross terms of +-0.1 that depend on the
  seed) / 1.49, is strictly increasing in rho (checked on a 21-point grid of
  rho for 6 seeds; the slope stays > 1 / 1.49 - 0.1). Measured logit
  correlation (seed 0, 100k rows): rho = -1: -0.69, -0.5: -0.39, 0: -0.07,
  0.2: 0.07, 0.6 (default): 0.35, 0.9: 0.57, 1: 0.64. The label correlation
  is much smaller: -0.09, -0.05, -0.01, 0.01, 0.05, 0.08, 0.10.

  `std` standardises with the mean and standard deviation of a fixed
  calibration sample (not the generated rows), and the biases are solved so
  that the calibration sample's mean probability is ctr_rate / cvr_rate. So
  the hidden model is a fixed function of the seed and settings, independent
  of num_examples. Labels ~ Bernoulli(sigmoid(logit)).

  At the defaults (seed 0, 100k rows): positive rates 24.0% / 11.9%, Bayes
  AUCs 0.779 (ctr) / 0.776 (cvr).

  Cost: rows are made CHUNK_ROWS at a time; 262k rows take ~2 s, 1M rows
  ~3.5 s with a peak RSS of ~0.5 GB (outputs included).

  Args:
    num_examples: N, number of rows.
    seed: fixes the hidden model and the rows.
    num_sparse: F, number of sparse fields.
    num_dense: D, number of dense features.
    vocab_size: V, ids per field.
    zipf_exponent: s of the Zipf law over id ranks.
    task_correlation: rho in [-1, 1], correlation of the tasks' shared parts.
    ctr_rate: target positive rate of `ctr`, in (0, 1).
    cvr_rate: target positive rate of `cvr`, in (0, 1).

  Returns:
    (columns, bayes_prob): columns has "sparse" int32[N, F] ids in [0, V),
    "dense" float32[N, D], "labels/ctr" and "labels/cvr" float32[N] in {0, 1}
    and "weights" float32[N] ones; bayes_prob maps "ctr" and "cvr" to
    float32[N], the hidden model's probabilities.
  """
  if not -1.0 <= task_correlation <= 1.0:
    raise errors.ConfigError(f"task_correlation must be in [-1, 1], got "
                     f"{task_correlation}.")
  for name, rate in (("ctr_rate", ctr_rate), ("cvr_rate", cvr_rate)):
    if not 0.0 < rate < 1.0:
      raise errors.ConfigError(f"{name} must be in (0, 1), got {rate}.")
  if num_sparse < 0 or num_dense < 0 or num_sparse + num_dense == 0:
    raise errors.ConfigError(f"Need num_sparse, num_dense >= 0 and at least one "
                     f"feature; got {num_sparse}, {num_dense}.")
  model_rng, calib_rng, data_rng = [
      np.random.default_rng(s)
      for s in np.random.SeedSequence(seed).spawn(3)]
  model = _build_ctr_model(
      model_rng, calib_rng, num_sparse=num_sparse, num_dense=num_dense,
      vocab_size=vocab_size, zipf_exponent=zipf_exponent,
      task_correlation=float(task_correlation), rates=(ctr_rate, cvr_rate))

  sparse = np.empty((num_examples, num_sparse), dtype=np.int32)
  dense = np.empty((num_examples, num_dense), dtype=np.float32)
  labels = np.empty((num_examples, 2), dtype=np.float32)
  probs = np.empty((num_examples, 2), dtype=np.float32)
  for start in range(0, num_examples, CHUNK_ROWS):
    rows = slice(start, min(start + CHUNK_ROWS, num_examples))
    n = rows.stop - rows.start
    sparse[rows], dense[rows] = _sample_inputs(data_rng, model.cdf,
                                               model.perms, n, num_dense)
    units = _hidden_units(model.tables, model.hidden_w, sparse[rows],
                          dense[rows])
    p = special.expit(_logits(model, units))
    labels[rows] = data_rng.random((n, 2)) < p
    probs[rows] = p
  columns = {
      "sparse": sparse,
      "dense": dense,
      "labels/ctr": np.ascontiguousarray(labels[:, 0]),
      "labels/cvr": np.ascontiguousarray(labels[:, 1]),
      "weights": np.ones(num_examples, dtype=np.float32),
  }
  bayes_prob = {"ctr": np.ascontiguousarray(probs[:, 0]),
                "cvr": np.ascontiguousarray(probs[:, 1])}
  return columns, bayes_prob


# --------------------------------------------------------------------------
# Splits.
# --------------------------------------------------------------------------


def _split_sizes(num_examples, validation_fraction, test_fraction):
  """(train, validation, test) row counts; train takes the rounding."""
  if not (0.0 <= validation_fraction and 0.0 <= test_fraction and
          validation_fraction + test_fraction < 1.0):
    raise errors.ConfigError(
        f"Need validation_fraction, test_fraction >= 0 with sum < 1; got "
        f"{validation_fraction}, {test_fraction}.")
  n_val = int(round(num_examples * validation_fraction))
  n_test = int(round(num_examples * test_fraction))
  n_train = num_examples - n_val - n_test
  if n_train <= 0:
    raise errors.ConfigError(f"No training rows: {num_examples} examples, "
                     f"{n_val} validation, {n_test} test.")
  return n_train, n_val, n_test


def _slice_columns(columns, start, stop):
  return {k: v[start:stop] for k, v in columns.items()}


def _positional_splits(spec, columns, extras, cfg):
  """Splits rows positionally into train / validation / test.

  Args:
    spec: specs.DatasetSpec of `columns`.
    columns: dict of numpy columns, N rows each.
    extras: dict of per-row side arrays (N rows each), split alongside.
    cfg: has validation_fraction and test_fraction.

  Returns:
    specs.Splits, each split validated against `spec`.
  """
  n = columns_lib.num_rows(columns)
  n_train, n_val, _ = _split_sizes(n, cfg.validation_fraction,
                                   cfg.test_fraction)
  bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val),
            "test": (n_train + n_val, n)}
  parts, side = {}, {}
  for name, (start, stop) in bounds.items():
    parts[name] = _slice_columns(columns, start, stop)
    columns_lib.validate_columns(spec, parts[name], name)
    side[name] = _slice_columns(extras, start, stop)
  return specs.Splits(spec=spec, extras=side, **parts)


def synthetic_ctr_spec(num_sparse, num_dense, vocab_size, embed_dim,
                       tasks=CTR_TASKS):
  """DatasetSpec 'synthetic_ctr': fields C0.., dense I0.., binary `tasks`."""
  return specs.DatasetSpec(
      name="synthetic_ctr",
      sparse=tuple(specs.SparseField(f"C{i}", vocab_size, embed_dim)
                   for i in range(num_sparse)),
      dense=tuple(specs.DenseField(f"I{i}") for i in range(num_dense)),
      tasks=tuple(specs.TaskSpec(t, "binary", "bce") for t in tasks))


def load_synthetic_ctr(cfg) -> specs.Splits:
  """`generate_ctr` data as positional train / validation / test splits.

  Args:
    cfg: has num_examples (total rows), seed, vocab_size, num_sparse,
      num_dense, task_correlation, embed_dim (the model's embedding width,
      written into the spec), validation_fraction, test_fraction; optionally
      zipf_exponent, ctr_rate, cvr_rate, ctcvr (bool, default False).

  With ctcvr, the `cvr` task is replaced by `ctcvr`, click AND convert
  (label ctr * cvr, Bayes probability p_ctr * p_cvr; the two labels are
  drawn independently given the features): the impression -> click ->
  conversion funnel of ESMM / AITM, with p_cvr the post-click CVR.

  Returns:
    specs.Splits named 'synthetic_ctr'; extras[split] holds
    "bayes_prob/<task>" for each task, float32[rows of the split].
  """
  cols, probs = generate_ctr(
      cfg.num_examples, seed=cfg.seed, num_sparse=cfg.num_sparse,
      num_dense=cfg.num_dense, vocab_size=cfg.vocab_size,
      zipf_exponent=getattr(cfg, "zipf_exponent", 1.1),
      task_correlation=cfg.task_correlation,
      ctr_rate=getattr(cfg, "ctr_rate", CTR_RATE),
      cvr_rate=getattr(cfg, "cvr_rate", CVR_RATE))
  tasks = CTR_TASKS
  if getattr(cfg, "ctcvr", False):
    tasks = ("ctr", "ctcvr")
    cols["labels/ctcvr"] = cols["labels/ctr"] * cols.pop("labels/cvr")
    probs["ctcvr"] = probs["ctr"] * probs.pop("cvr")
  spec = synthetic_ctr_spec(cfg.num_sparse, cfg.num_dense, cfg.vocab_size,
                            cfg.embed_dim, tasks)
  extras = {f"bayes_prob/{t}": p for t, p in probs.items()}
  return _positional_splits(spec, cols, extras, cfg)


# --------------------------------------------------------------------------
# MMoE paper synthetic regression data.
# --------------------------------------------------------------------------


def _draw_task_weights(rng, correlation, input_dim, c):
  """Paper steps (1)-(2): w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2).

  Args:
    rng: np.random.Generator (consumes 2 * input_dim normals).
    correlation: p in [-1, 1], the cosine of w1 and w2.
    input_dim: d.
    c: scale constant, |w1| = |w2| = c.

  Returns:
    (w1, w2), float64[d] each.
  """
  if not -1.0 <= correlation <= 1.0:
    raise errors.ConfigError(f"correlation must be in [-1, 1], got {correlation}.")
  if input_dim < 2:
    raise errors.ConfigError(f"input_dim must be >= 2, got {input_dim}.")
  g1 = rng.standard_normal(input_dim)
  g2 = rng.standard_normal(input_dim)
  u1 = g1 / np.linalg.norm(g1)
  g2 = g2 - (g2 @ u1) * u1
  u2 = g2 / np.linalg.norm(g2)
  w1 = c * u1
  w2 = c * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
  return w1, w2


def mmoe_task_weights(seed: int, p: float, d: int = 100,
                      c: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
  """The hidden (w1, w2), float64[d] each, that `generate_mmoe_regression`
  uses for this seed: cos(w1, w2) = p and |w1| = |w2| = c."""
  return _draw_task_weights(np.random.default_rng(seed), p, d, c)


def _draw_mmoe_params(rng, correlation, input_dim, c, num_sin):
  """w1, w2 then alpha, beta ~ N(0, 1) (float64[m] each), from `rng`."""
  w1, w2 = _draw_task_weights(rng, correlation, input_dim, c)
  alpha = rng.standard_normal(num_sin)
  beta = rng.standard_normal(num_sin)
  return {"w1": w1, "w2": w2, "alpha": alpha, "beta": beta}


def mmoe_hidden_params(seed: int, *, correlation: float, input_dim: int = 100,
                       c: float = 1.0,
                       num_sin: int = 10) -> Dict[str, np.ndarray]:
  """The hidden parameters `generate_mmoe_regression` uses for this seed.

  Returns:
    {"w1": float64[d], "w2": float64[d], "alpha": float64[m],
     "beta": float64[m]}.
  """
  return _draw_mmoe_params(np.random.default_rng(seed), correlation,
                           input_dim, c, num_sin)


def _mmoe_response(t, alpha, beta):
  """t + sum_i sin(alpha_i t + beta_i); t float64[N] -> float64[N]."""
  y = t.copy()
  for a, b in zip(alpha, beta):
    y += np.sin(a * t + b)
  return y


def generate_mmoe_regression(
    num_examples: int,
    *,
    seed: int,
    correlation: float,
    input_dim: int = 100,
    c: float = 1.0,
    num_sin: int = 10,
    noise_std: float = 0.01,
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """The MMoE paper's two-task synthetic regression data (Ma et al. 2018).

  Paper, section 3.2: take orthogonal unit vectors u1, u2 in R^d, a scale c
  and a correlation score -1 <= p <= 1; w1 = c u1, w2 = c (p u1 +
  sqrt(1 - p^2) u2), so cos(w1, w2) = p; x ~ N(0, I_d);
    y_k = w_k^T x + sum_{i=1}^m sin(alpha_i w_k^T x + beta_i) + eps_k.
  The paper calls alpha_i, beta_i (shared by both tasks) "given parameters"
  without saying how they were chosen (we found no code from the authors);
  we draw them from N(0, 1), as common re-implementations do. The paper writes
  eps ~ N(0, 0.01); we read 0.01 as the standard deviation (`noise_std`).

  Draw order from np.random.default_rng(seed): u1, u2, alpha, beta, then x,
  then eps. So the hidden model does not depend on num_examples, and for one
  seed every p sees the same u1, u2, alpha, beta, x and eps (only w2 moves).

  The label Pearson correlation is not p, because of the sines. w_k^T x = c z_k
  with (z1, z2) standard normal of correlation p; expanding h(z) = c z +
  sum_i sin(alpha_i c z + beta_i) = sum_k b_k He_k(z) in Hermite polynomials,
  Cov(y1, y2) = sum_{k>=1} b_k^2 k! p^k, while Var(y_k) does not depend on p.
  So for p in [0, 1] the label correlation rises strictly with p, to ~1 at
  p = 1 (y1 - y2 = eps1 - eps2). For p < 0 the even-order terms (from
  beta != 0) count positively, so whether it keeps falling depends on the
  draw of alpha, beta. Measured (defaults, 20k-200k
  rows), p = 1, 0.9, 0.5, 0, -0.5, -1:
    seed 0: 1.00, 0.70, 0.11, -0.00, -0.06, -0.62
    seed 2: 1.00, 0.90, 0.50, 0.01, -0.49, -0.99
    seed 4: 1.00, 0.74, 0.21, 0.01, 0.04, 0.62  (not monotone for p < 0)

  Args:
    num_examples: N.
    seed: fixes the hidden model and the rows.
    correlation: p, cos(w1, w2), in [-1, 1].
    input_dim: d.
    c: scale constant, |w1| = |w2| = c.
    num_sin: m, number of sine terms.
    noise_std: standard deviation of eps_1, eps_2.

  Returns:
    (columns, bayes_mean): columns has "dense" float32[N, d] = x, "sparse"
    int32[N, 0], "labels/y1", "labels/y2" float32[N] and "weights" float32[N]
    ones; bayes_mean maps "y1", "y2" to float32[N], E[y_k | x] (the
    Bayes-optimal predictor under squared error; its MSE is noise_std^2).
  """
  rng = np.random.default_rng(seed)
  params = _draw_mmoe_params(rng, correlation, input_dim, c, num_sin)
  x = rng.standard_normal((num_examples, input_dim), dtype=np.float32)
  w = np.stack([params["w1"], params["w2"]], axis=1).astype(np.float32)
  t = (x @ w).astype(np.float64)
  eps = noise_std * rng.standard_normal((num_examples, 2))
  columns = {"dense": x,
             "sparse": np.zeros((num_examples, 0), dtype=np.int32),
             "weights": np.ones(num_examples, dtype=np.float32)}
  bayes_mean = {}
  for k, task in enumerate(MMOE_TASKS):
    mean = _mmoe_response(t[:, k], params["alpha"], params["beta"])
    columns[f"labels/{task}"] = (mean + eps[:, k]).astype(np.float32)
    bayes_mean[task] = mean.astype(np.float32)
  return columns, bayes_mean


def mmoe_synthetic_spec(input_dim):
  """DatasetSpec 'mmoe_synthetic': dense x0.., tasks y1, y2, no sparse."""
  return specs.DatasetSpec(
      name="mmoe_synthetic",
      sparse=(),
      dense=tuple(specs.DenseField(f"x{i}") for i in range(input_dim)),
      tasks=(specs.TaskSpec("y1", "regression", "mse"),
             specs.TaskSpec("y2", "regression", "mse")))


def load_mmoe_synthetic(cfg) -> specs.Splits:
  """`generate_mmoe_regression` data as positional splits.

  All rows come from one call, so every split shares one hidden model.

  Args:
    cfg: has num_examples (total rows), seed, correlation, input_dim,
      num_sin, c, noise_std, validation_fraction, test_fraction.

  Returns:
    specs.Splits named 'mmoe_synthetic'; extras[split] holds "bayes_mean/y1"
    and "bayes_mean/y2", float32[rows of the split].
  """
  cols, means = generate_mmoe_regression(
      cfg.num_examples, seed=cfg.seed, correlation=cfg.correlation,
      input_dim=cfg.input_dim, c=cfg.c, num_sin=cfg.num_sin,
      noise_std=cfg.noise_std)
  spec = mmoe_synthetic_spec(cfg.input_dim)
  extras = {f"bayes_mean/{t}": m for t, m in means.items()}
  return _positional_splits(spec, cols, extras, cfg)
