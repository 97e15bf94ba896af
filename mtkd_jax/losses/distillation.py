"""Pure knowledge-distillation losses: per-example values, like `task_losses`.

Every loss returns float[B] (float32, or float64 for float64 inputs) and is
reduced by the shared `weighted_mean`, so padded rows (weight 0) never count.
Teachers are plain inputs: no function here calls `stop_gradient` on a
teacher unless its paper's update rule demands it (DML's peers, the
CrossDistil calibrator, the ranking-distillation weights); a frozen teacher is
the caller's `jax.lax.stop_gradient(teacher)`.

Pointwise soft targets (`KD_LOSSES`, signature `(student, teacher, *,
temperature) -> float[B]`):
  soft_bce   T^2 KL(Bern(σ(t/T)) || Bern(σ(s/T)))      Hinton et al. 2015
  soft_ce    T^2 KL(softmax(t/T) || softmax(s/T))        Hinton et al. 2015
  logit_mse  mean_c (s_c - t_c)^2 (temperature ignored)   Ba & Caruana 2014

Ranking and relational terms: `ranking_distillation` (Tang & Wang, KDD 2018),
`listwise_kd` (ListNet, Cao et al. 2007), `pairwise_kd` (RankNet, Burges et
al. 2005), `feature_hint` (FitNets, Romero et al. 2015), `ensemble_logits` /
`auc_weights` (teacher ensembles), `mutual_distillation` (DML, Zhang et al.
2018) and the CrossDistil pieces below.

CrossDistil (Yang et al., "Cross-Task Knowledge Distillation in Multi-Task
Recommendation", AAAI 2022). No public implementation exists and the paper's
method section could not be retrieved while writing this (only its abstract
and introduction, and second-hand summaries), so what follows is what was
implemented, marked paper (P) where it follows the paper's stated design and
chosen (C) where it is our decision:
  (P) Two binary tasks a, b split samples into four types by (y_a, y_b):
      "++", "+-", "-+", "--". The augmented ranking task of task a orders
      them by a's own label first, then b's:  ++ > +- > -+ > --, i.e. the
      grade g_a = 2 y_a + y_b; task b symmetrically ++ > -+ > +- > --,
      g_b = 2 y_b + y_a. Each order agrees with the task's own binary label
      (no task conflict) and refines it within equal labels.
  (P) A BPR-style pairwise loss on the auxiliary head's scores r:
      l(i > j) = -log σ(r_i - r_j) = softplus(r_j - r_i).
  (C) Pairs are formed in-batch: every (i, j) with g_i > g_j (optionally only
      |g_i - g_j| = 1, the three adjacent links of the paper's quadruplet,
      and optionally only within a group such as a user), each pair weighted
      by w_i w_j. Row i gets the share
        l_i = (W / P) * 1/2 * sum_j [pairs containing i] w_j l_ij,
      W = sum_i w_i, P = sum_pairs w_i w_j, so that the shared weighted mean
      sum_i w_i l_i / W equals the weighted mean pair loss.
  (P) Calibration of the auxiliary (teacher) score before distillation,
      Platt scaling (Platt 1999): z~ = a r + b, p~ = σ(z~) (`platt_calibrate`),
      with (a, b) fitted by binary cross-entropy against the task's labels.
  (C) "Bi-level": the calibrator's loss `platt_calibration_loss` stops the
      gradient into r, so (a, b) are fitted only by it and the teacher only
      by its ranking loss; a > 0 keeps the teacher's order (parametrise
      a = softplus(raw) to enforce it).
  (P/C) The student head of task a then learns from p~ with a soft-target
      loss; here `binary_soft_target(student, stop_gradient(z~))` (its
      gradient equals that of BCE against the soft label p~).
  Not implemented: the paper's error-correction mechanism for synchronous
  teacher/student training; its definition could not be checked against the
  paper (second-hand accounts disagree), so it is left to a later change.
"""
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp

from mtkd_jax import registry

Array = jax.Array

ENSEMBLE_SPACES = ("logit", "prob")
CROSSDISTIL_TASKS = ("a", "b")


def _float(x) -> Array:
  """x as an at-least-float32 array (bf16 -> f32, f64 stays f64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _bernoulli_log_probs(logits: Array) -> Array:
  """[..., 2] log-probabilities (log σ(z), log σ(-z)) of Bernoulli(σ(z))."""
  return jnp.stack([jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)],
                   axis=-1)


def _kl_from_log_probs(log_p: Array, log_q: Array) -> Array:
  """KL(p || q) = sum_c p_c (log p_c - log q_c) over the last axis."""
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


# ----------------------------------------------------------- soft targets


def binary_soft_target(student_logits: Array, teacher_logits: Array,
                       temperature: float = 1.0) -> Array:
  """Temperature-scaled soft-target loss of a Bernoulli (CTR/CVR) head.

  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
  2015, with the softmax over two outcomes written as a sigmoid:
    l = T^2 KL(Bern(p_t) || Bern(p_s)),  p_t = σ(t/T), p_s = σ(s/T),
      = T^2 [p_t (log p_t - log p_s) + (1 - p_t)(log(1 - p_t) - log(1 - p_s))],
  with every log from `log_sigmoid` (log(1 - σ(x)) = log σ(-x)), so it is
  finite for any finite logits. It is 0 when s == t, and its gradient
  dl/ds = T (σ(s/T) - σ(t/T)) tends to (s - t)/4 as T grows: the T^2 keeps
  the gradient's scale roughly independent of T, as Hinton et al. note.
  Same gradient in s as BCE against the soft label p_t (they differ by the
  teacher's entropy).

  The teacher is not stop-gradient'ed here: pass
  `jax.lax.stop_gradient(teacher_logits)` for a frozen or co-trained teacher.

  Args:
    student_logits: float[B] student logits s.
    teacher_logits: float[B] teacher logits t.
    temperature: T > 0.
  Returns:
    float[B] per-example losses.
  """
  s, t = _float(student_logits), _float(teacher_logits)
  kl = _kl_from_log_probs(_bernoulli_log_probs(t / temperature),
                          _bernoulli_log_probs(s / temperature))
  return temperature ** 2 * kl


def multiclass_soft_target(student_logits: Array, teacher_logits: Array,
                           temperature: float = 1.0) -> Array:
  """Hinton et al. (2015) soft-target loss of a multiclass head.

    l = T^2 KL(softmax(t/T) || softmax(s/T))
      = T^2 sum_c p_t,c (log p_t,c - log p_s,c),
  from `log_softmax`. 0 when s == t (or s = t + const per row); dl/ds =
  T (softmax(s/T) - softmax(t/T)), which for large T tends to
  ((s - mean s) - (t - mean t)) / C (Hinton et al., section 2.1). The teacher
  is not stop-gradient'ed here (the caller does it).

  Args:
    student_logits: float[B, C].
    teacher_logits: float[B, C].
    temperature: T > 0.
  Returns:
    float[B] per-example losses.
  """
  s, t = _float(student_logits), _float(teacher_logits)
  kl = _kl_from_log_probs(jax.nn.log_softmax(t / temperature, axis=-1),
                          jax.nn.log_softmax(s / temperature, axis=-1))
  return temperature ** 2 * kl


def logit_mse(student: Array, teacher: Array) -> Array:
  """Squared error of logits (Ba & Caruana, "Do Deep Nets Really Need to be
  Deep?", NeurIPS 2014), also prediction matching for regression heads.

    l = (s - t)^2 for float[B];  l = (1/C) sum_c (s_c - t_c)^2 for [B, C].

  Args:
    student: float[B] or float[B, C].
    teacher: the same shape.
  Returns:
    float[B] per-example losses.
  """
  sq = jnp.square(_float(student) - _float(teacher))
  return sq if sq.ndim == 1 else jnp.mean(sq, axis=tuple(range(1, sq.ndim)))


def mix_hard_soft(hard: Array, soft: Array, alpha: float) -> Array:
  """(1 - alpha) * hard + alpha * soft: Hinton et al.'s weighted average of
  the hard-label loss and the soft-target loss, both float[B]."""
  return (1.0 - alpha) * _float(hard) + alpha * _float(soft)


def _logit_mse_kd(student: Array, teacher: Array, *,
                  temperature: float = 1.0) -> Array:
  """`logit_mse` with the KD_LOSSES signature; `temperature` is ignored."""
  del temperature
  return logit_mse(student, teacher)


KD_LOSSES: Dict[str, Callable[..., Array]] = {
    "soft_bce": binary_soft_target,
    "soft_ce": multiclass_soft_target,
    "logit_mse": _logit_mse_kd,
}


def get_kd_loss(name: str) -> Callable[..., Array]:
  """The pointwise distillation loss `fn(student, teacher, *, temperature)`."""
  return registry.lookup(KD_LOSSES, name, "distillation loss")


# ------------------------------------------------------- ranking distillation


def position_weights(k: int, lam: float) -> Array:
  """Tang & Wang's position-importance weights w^a_r ∝ exp(-r / lam).

  r = 1..k, normalised to sum to 1 (as in the authors' code).

  Args:
    k: number of teacher positions K (static).
    lam: lambda > 0; smaller concentrates the weight on the top positions.
  Returns:
    float32[K].
  """
  r = jnp.arange(1, k + 1, dtype=jnp.float32)
  return jax.nn.softmax(-r / lam)


def ranking_distillation(student_scores: Array, teacher_scores: Array, *,
                         k: int, lam: float, mask: Optional[Array] = None,
                         mu: Optional[float] = None,
                         renormalize: bool = False) -> Array:
  """Ranking distillation (Tang & Wang, "Ranking Distillation: Learning
  Compact Ranking Models With High Performance for Recommender System",
  KDD 2018).

  Each row b scores one user against N candidates. With pi_1..pi_K the
  teacher's top-K candidates of the row (excluded ones never chosen), the
  student treats them as positives with position weights:
    l_b = -sum_{r=1}^K w_r log σ(s_{b, pi_r}),
    w^a_r = exp(-r / lam) / sum_{r'} exp(-r' / lam)   (position importance),
  and, when `mu` is given, the paper's hybrid weighting
    w_r = w^a_r * w^b_r,  w^b_r = tanh(max(mu (rhat_r - r), 0)),
  where rhat_r = 1 + #{allowed j : s_j > s_{pi_r}} is the student's (1-based)
  rank of pi_r among the row's candidates: w^b is 0 for items the student
  already ranks at or above the teacher's position and grows with the
  discrepancy. The paper estimates rhat_r by sampling because it ranks a
  whole catalogue; here every candidate's score is at hand, so rhat_r is
  exact over the N candidates. The authors' code (graytowne/rank_distill,
  `distill_caser.py`) multiplies the two weights and does not re-normalise
  by default (its `_weight_renormalize = False`); `renormalize=True` is its
  option of dividing w by sum_r w_r per row. The paper switches from w^a to
  the hybrid after a few epochs: the caller passes `mu=None` until then.
  The weights carry no gradient (the authors detach them).

  Rows with fewer than K allowed candidates give weight 0 to the missing
  positions (no re-normalisation).

  Args:
    student_scores: float[B, N] student logits s.
    teacher_scores: float[B, N] teacher scores (only their order is used).
    k: K, the teacher's top positions (static, K <= N).
    lam: lambda > 0 of the position weights.
    mask: optional bool[B, N]; True marks a candidate that may be ranked,
      False excludes it (the row's own training positive, padding columns)
      from the teacher's top-K and from the student's rank.
    mu: optional mu > 0; enables the hybrid (ranking-discrepancy) weights.
    renormalize: divide the hybrid weights by their row sum.
  Returns:
    float[B] per-example losses.
  """
  s, t = _float(student_scores), _float(teacher_scores)
  if mask is None:
    mask = jnp.ones(s.shape, dtype=bool)
  mask = jnp.asarray(mask, dtype=bool)
  _, top = jax.lax.top_k(jnp.where(mask, t, -jnp.inf), k)      # [B, K]
  picked_ok = jnp.take_along_axis(mask, top, axis=1)           # [B, K]
  s_top = jnp.take_along_axis(s, top, axis=1)                  # [B, K]
  w = jnp.broadcast_to(position_weights(k, lam).astype(s.dtype), s_top.shape)
  if mu is not None:
    above = (s[:, None, :] > s_top[:, :, None]) & mask[:, None, :]  # [B, K, N]
    rhat = 1.0 + jnp.sum(above, axis=-1).astype(s.dtype)
    r = jnp.arange(1, k + 1, dtype=s.dtype)
    w = w * jnp.tanh(jnp.maximum(mu * (rhat - r), 0.0))
  w = jnp.where(picked_ok, w, 0.0)
  if mu is not None and renormalize:
    total = jnp.sum(w, axis=1, keepdims=True)
    w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
  w = jax.lax.stop_gradient(w)
  return -jnp.sum(w * jax.nn.log_sigmoid(s_top), axis=1)


# ------------------------------------------------- in-batch lists and pairs


def _valid_rows(weights: Optional[Array], n: int) -> Array:
  """bool[B]: rows with weight > 0 (all rows when weights is None)."""
  if weights is None:
    return jnp.ones((n,), dtype=bool)
  return jnp.asarray(weights) > 0


def listwise_kd(student: Array, teacher: Array, group_ids: Array, *,
                temperature: float = 1.0,
                weights: Optional[Array] = None) -> Array:
  """ListNet distillation within the groups (lists) of a batch.

  Cao et al., "Learning to Rank: From Pairwise Approach to Listwise
  Approach", ICML 2007 (top-1 probabilities), with the teacher's top-1
  distribution as the target. The rows with the same group id (e.g. the same
  user) and weight > 0 form one list G; for row i in G
    p^T_i = exp(t_i/T) / sum_{j in G} exp(t_j/T),  p^S_i likewise for s,
    l_i = -p^T_i log p^S_i,
  so sum_{i in G} l_i is the ListNet cross-entropy of G (no T^2 factor). A
  row alone in its list has l = 0; rows with weight 0 are in no list and
  get 0. `weights` only selects rows; it does not reweight the softmax.

  Args:
    student: float[B] student scores s.
    teacher: float[B] teacher scores t (stop-gradient'ed by the caller).
    group_ids: int[B] list keys.
    temperature: T > 0.
    weights: optional float[B]; 0 marks padding.
  Returns:
    float[B] per-row shares of the lists' cross-entropies.
  """
  s, t = _float(student) / temperature, _float(teacher) / temperature
  valid = _valid_rows(weights, s.shape[0])
  g = jnp.asarray(group_ids)
  same = (g[:, None] == g[None, :]) & valid[:, None] & valid[None, :]
  same = same | jnp.eye(s.shape[0], dtype=bool)   # no empty row: finite lse
  def log_softmax_in_list(x):
    return x - jax.nn.logsumexp(jnp.where(same, x[None, :], -jnp.inf), axis=1)
  log_pt = log_softmax_in_list(t)
  log_ps = log_softmax_in_list(s)
  return jnp.where(valid, -jnp.exp(log_pt) * log_ps, 0.0)


def pairwise_kd(student: Array, teacher: Array, group_ids: Array, *,
                temperature: float = 1.0,
                weights: Optional[Array] = None) -> Array:
  """RankNet distillation on the pairs of each in-batch list.

  Burges et al., "Learning to Rank using Gradient Descent", ICML 2005, with
  the teacher's pair probability as the soft target. For ordered pairs
  (i, j), i != j, of rows with the same group id and weight > 0:
    P_ij = σ((t_i - t_j) / T),
    l_ij = BCE(σ(s_i - s_j), P_ij) = softplus(s_i - s_j) - P_ij (s_i - s_j),
  (l_ij = l_ji) and row i's value is the mean of l_ij over its pairs, 0 when
  it has none (alone in its list, or padding).

  Args:
    student: float[B] student scores s.
    teacher: float[B] teacher scores t.
    group_ids: int[B] list keys.
    temperature: T > 0, applied to the teacher's differences only.
    weights: optional float[B]; 0 marks padding.
  Returns:
    float[B] per-row mean pair losses.
  """
  s, t = _float(student), _float(teacher)
  valid = _valid_rows(weights, s.shape[0])
  g = jnp.asarray(group_ids)
  pair = ((g[:, None] == g[None, :]) & valid[:, None] & valid[None, :]
          & ~jnp.eye(s.shape[0], dtype=bool))
  d = s[:, None] - s[None, :]
  target = jax.nn.sigmoid((t[:, None] - t[None, :]) / temperature)
  l = jax.nn.softplus(d) - target * d
  count = jnp.sum(pair, axis=1)
  total = jnp.sum(jnp.where(pair, l, 0.0), axis=1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


# ------------------------------------------------------------------ features


def feature_hint(projected_student: Array, teacher_features: Array) -> Array:
  """FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets",
  ICLR 2015, eq. 3): 1/2 ||u_h - r(v_g)||^2 per example.

  Args:
    projected_student: float[B, ...], the regressor's output r(v_g) on the
      student's guided layer.
    teacher_features: float[B, ...], the teacher's hint layer u_h.
  Returns:
    float[B]: 0.5 * sum over the non-batch axes of the squared difference.
  """
  sq = jnp.square(_float(projected_student) - _float(teacher_features))
  return 0.5 * jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)


# ----------------------------------------------------------------- ensembles


def ensemble_logits(teacher_logits: Array, *, space: str = "logit",
                    weights: Optional[Array] = None) -> Array:
  """One target from K teachers: a weighted mean of logits or probabilities.

  With w_k >= 0 normalised to sum 1 (uniform by default):
    space="logit": z = sum_k w_k z_k;
    space="prob", binary [K, B]: p = sum_k w_k σ(z_k), returned as the
      log-odds log p - log(1 - p), each term a logsumexp over
      log w_k + log σ(±z_k) (finite for any finite logits);
    space="prob", multiclass [K, B, C]: log sum_k w_k softmax(z_k), the
      log-probabilities of the averaged distribution (valid logits).

  Args:
    teacher_logits: float[K, B] (binary) or float[K, B, C] (multiclass).
    space: "logit" or "prob".
    weights: optional float[K] >= 0 with a positive sum.
  Returns:
    float[B] (or float[B, C]) ensemble logits.
  Raises:
    ValueError: for an unknown `space`.
  """
  if space not in ENSEMBLE_SPACES:
    raise ValueError(f"Unknown ensemble space {space!r}; valid spaces: "
                     f"{', '.join(ENSEMBLE_SPACES)}.")
  z = _float(teacher_logits)
  num = z.shape[0]
  w = (jnp.full((num,), 1.0 / num, dtype=z.dtype) if weights is None
       else _float(weights).astype(z.dtype))
  w = w / jnp.sum(w)
  wb = w.reshape((num,) + (1,) * (z.ndim - 1))
  if space == "logit":
    return jnp.sum(wb * z, axis=0)
  if z.ndim == 2:
    log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(z), axis=0, b=wb)
    log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-z), axis=0, b=wb)
    return log_p - log_q
  return jax.nn.logsumexp(jax.nn.log_softmax(z, axis=-1), axis=0, b=wb)


def auc_weights(aucs: Array) -> Array:
  """Ensemble weights proportional to each teacher's AUC above chance.

    w_k = max(AUC_k - 0.5, 0) / sum_j max(AUC_j - 0.5, 0),
  uniform 1/K when no teacher beats chance. Use validation AUCs (never
  test). A simple heuristic of ours, not from a paper.

  Args:
    aucs: float[K] validation AUCs.
  Returns:
    float[K] weights summing to 1.
  """
  a = _float(aucs)
  gain = jnp.maximum(a - 0.5, 0.0)
  total = jnp.sum(gain)
  uniform = jnp.full_like(a, 1.0 / a.shape[0])
  return jnp.where(total > 0, gain / jnp.where(total > 0, total, 1.0), uniform)


def mutual_distillation(student_logits: Array,
                        temperature: float = 1.0) -> Array:
  """Deep Mutual Learning (Zhang et al., CVPR 2018, eq. 3 / 10) of K peers.

  Each peer k learns from the others' current predictions, held fixed:
    l_k = 1/(K-1) sum_{j != k} T^2 KL(sg(p_j) || p_k),
  p = σ(z/T) as Bern for binary peers [K, B], softmax(z/T) for multiclass
  [K, B, C]; sg = stop_gradient, so l_k's gradient reaches peer k only.
  With K = 1 the result is 0.

  Args:
    student_logits: float[K, B] or float[K, B, C].
    temperature: T > 0.
  Returns:
    float[K, B] per-peer, per-example losses.
  """
  z = _float(student_logits) / temperature
  if z.ndim == 2:
    log_p = _bernoulli_log_probs(z)                     # [K, B, 2]
  else:
    log_p = jax.nn.log_softmax(z, axis=-1)              # [K, B, C]
  num = z.shape[0]
  log_p_sg = jax.lax.stop_gradient(log_p)
  p_sg = jnp.exp(log_p_sg)
  neg_entropy = jnp.sum(p_sg * log_p_sg, axis=-1)       # [K(j), B]
  cross = jnp.einsum("jbc,kbc->jkb", p_sg, log_p)       # [K(j), K(k), B]
  kl = neg_entropy[:, None, :] - cross                  # KL(p_j || p_k)
  off = ~jnp.eye(num, dtype=bool)[:, :, None]
  total = jnp.sum(jnp.where(off, kl, 0.0), axis=0)      # [K(k), B]
  return temperature ** 2 * total / max(num - 1, 1)


# ---------------------------------------------------------------- CrossDistil


def crossdistil_augmented_ranking(scores: Array, labels_a: Array,
                                  labels_b: Array, *, task: str = "a",
                                  weights: Optional[Array] = None,
                                  group_ids: Optional[Array] = None,
                                  adjacent_only: bool = False) -> Array:
  """CrossDistil's augmented ranking task, as in-batch BPR pairs.

  Yang et al., "Cross-Task Knowledge Distillation in Multi-Task
  Recommendation", AAAI 2022 (see the module docstring for what follows the
  paper and what is our choice). Fine-grained grades
    task "a": g = 2 y_a + y_b   (++ > +- > -+ > --),
    task "b": g = 2 y_b + y_a   (++ > -+ > +- > --);
  for every pair with g_i > g_j (and |g_i - g_j| = 1 if `adjacent_only`,
  same group if `group_ids`), l_ij = softplus(r_j - r_i) with pair weight
  w_i w_j. Row i's share is
    l_i = (W / P) * 1/2 * sum_{j paired with i} w_j l_ij,
  W = sum_i w_i, P = sum_pairs w_i w_j, so sum_i w_i l_i / W is the weighted
  mean pair loss. All zeros when the batch has no such pair.

  Args:
    scores: float[B] scores r of the task's auxiliary (teacher) head.
    labels_a: float[B] binary labels of task a.
    labels_b: float[B] binary labels of task b.
    task: "a" or "b", whose augmented ranking to learn.
    weights: optional float[B] >= 0; 0 marks padding.
    group_ids: optional int[B]; pairs only within a group (e.g. a user).
    adjacent_only: keep only pairs of adjacent grades (the quadruplet's
      three links ++/+-, +-/-+, -+/-- for task a).
  Returns:
    float[B] per-row shares of the pairwise loss.
  Raises:
    ValueError: for an unknown `task`.
  """
  if task not in CROSSDISTIL_TASKS:
    raise ValueError(f"Unknown CrossDistil task {task!r}; valid tasks: "
                     f"{', '.join(CROSSDISTIL_TASKS)}.")
  r = _float(scores)
  ya = (jnp.asarray(labels_a) > 0.5).astype(jnp.int32)
  yb = (jnp.asarray(labels_b) > 0.5).astype(jnp.int32)
  grade = 2 * ya + yb if task == "a" else 2 * yb + ya
  w = (jnp.ones_like(r) if weights is None
       else jnp.where(jnp.asarray(weights) > 0, _float(weights), 0.0)
       .astype(r.dtype))
  gap = grade[:, None] - grade[None, :]                       # g_i - g_j
  above = (gap == 1) if adjacent_only else (gap > 0)          # i ranks above j
  if group_ids is not None:
    g = jnp.asarray(group_ids)
    above = above & (g[:, None] == g[None, :])
  pw = jnp.where(above, w[:, None] * w[None, :], 0.0)         # [B, B]
  l = jax.nn.softplus(r[None, :] - r[:, None])                # l_ij, i above j
  wl = pw * l
  num_pairs = jnp.sum(pw)
  per_row = 0.5 * (jnp.sum(wl, axis=1) + jnp.sum(wl, axis=0))  # w_i * (...)
  scale = jnp.sum(w) / jnp.where(num_pairs > 0, num_pairs, 1.0)
  share = jnp.where(w > 0, per_row / jnp.where(w > 0, w, 1.0), 0.0)
  return jnp.where(num_pairs > 0, scale * share, 0.0)


def platt_calibrate(logits: Array, a, b) -> Array:
  """Platt scaling (Platt 1999), CrossDistil's calibrator: z~ = a z + b.

  Maps a ranking score to a calibrated logit (probability σ(a z + b));
  order-preserving iff a > 0.

  Args:
    logits: float[B] (or any shape) uncalibrated scores z.
    a: scalar slope.
    b: scalar intercept.
  Returns:
    Calibrated logits, the shape of `logits`.
  """
  return a * _float(logits) + b


def platt_calibration_loss(logits: Array, labels: Array, a, b) -> Array:
  """The calibrator's fitting loss: BCE(σ(a sg(z) + b), y), float[B].

  sg = stop_gradient: the loss fits (a, b) only, never the scores' model
  (CrossDistil's separate, "bi-level" calibrator update; see the module
  docstring).

  Args:
    logits: float[B] uncalibrated teacher scores z.
    labels: float[B] in [0, 1].
    a: scalar slope.
    b: scalar intercept.
  Returns:
    float[B] per-example losses softplus(z~) - y z~.
  """
  z = platt_calibrate(jax.lax.stop_gradient(_float(logits)), a, b)
  return jax.nn.softplus(z) - _float(labels) * z
