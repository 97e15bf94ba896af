"""The fields every experiment config has, with their defaults.

Experiment configs in configs/ call `default_config()` and set the data,
tasks and model; because configs are locked, every overridable key must exist
here, so `--config.train.batch_size=512` works for every experiment and a
misspelt key fails with a message naming it.
"""
import ml_collections

from mtkd_jax import models
from mtkd_jax import weighting


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()  # dataset-specific; set by the config
  c.tasks = ml_collections.ConfigDict()  # {task: {loss: str, weight: float}}

  # The model (mtkd_jax/models): `name`, the behaviour-sequence encoder
  # keys, and every registered model's knobs, unset (None) until a config or
  # --config.model.<knob>=... sets them; unset knobs take the model's own
  # defaults (its dataclass fields; see each model's docstring).
  c.model = models.default_config("mmoe")

  # Multi-task balancing: --config.weighting.name=pcgrad, its settings
  # --config.weighting.pcgrad.<setting> (see weighting/).
  c.weighting = weighting.default_config()
  c.weighting.diagnostics_every = 500  # per-term grad norms/cosines; 0 = off

  # Knowledge distillation (mtkd_jax/distill): teachers are trained runs,
  # restored from <workdir>/best, frozen and passed into the jit step.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdirs = ()  # () = no distillation
  # Methods (distill.methods.METHODS), comma-separated to combine: soft_target,
  # logit_matching, listwise, pairwise, ranking, hint, crossdistil,
  # crossdistil_teacher, dml; each turns on its knobs below.
  c.distill.method = "soft_target"
  c.distill.mode = "online"  # teacher inside the step, or "offline" (precomputed)
  c.distill.tasks = ()  # tasks with a kd/<task> term; () = every task
  c.distill.alpha = 0.5  # task term weight (1 - alpha) w_t, kd/<task> alpha w_t
  c.distill.temperature = 2.0  # soft targets scaled by T^2 (Hinton et al.)
  c.distill.loss = "auto"  # auto: soft_bce / soft_ce / logit_mse by task kind
  c.distill.ensemble = "logit"  # several teachers: average logits or "prob"
  c.distill.ensemble_weights = "uniform"  # or "auc": by validation AUC
  c.distill.calibrate = False  # Platt-scale teachers on validation (CrossDistil)
  c.distill.hint_weight = 0.0  # FitNets kd/hint term weight; 0 = off
  c.distill.hint_feature = "task_inputs"  # aux key of both models
  c.distill.listwise = ""  # "", "listnet" or "ranknet": kd/list/<task> per user
  c.distill.listwise_weight = 1.0
  c.distill.ranking_k = 10  # retrieval tasks: teacher's top-K as positives
  c.distill.ranking_lambda = 5.0  # position-importance decay (Tang & Wang)
  c.distill.ranking_weight = 0.0  # kd/rank/<task> weight; 0 = off
  # CrossDistil (Yang et al. 2022), teacher side: augmented cross-task
  # ranking terms rank/<task> over the first two binary tasks; 0 = off.
  c.distill.crossdistil_ranking_weight = 0.0
  # Online mutual distillation (DML, Zhang et al. 2018): K >= 2 peers of the
  # model trained together; the first one is evaluated. 0 = off.
  c.distill.dml_peers = 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.momentum = 0.0
  c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping
  # Embedding tables: "dense" (the optimizer above, exact dense Adam etc.;
  # with train.accel on, "adam" is computed from the tables' row gradients
  # without a dense gradient: optax.adam's update to the last bit),
  # or a row-sparse optimizer whose step cost grows with the rows a batch
  # touches, not the table size (mtkd_jax/accel/row_optim.py, which says how
  # each differs from dense Adam): "row_adagrad" (row-wise Adagrad as in
  # DLRM/TorchRec, lr and eps above) or "lazy_adam" (Adam on the touched
  # rows only, b1/b2/eps above). Tables get no weight decay with these.
  c.optimizer.embedding = "dense"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1024  # global, over all devices of all hosts
  c.train.num_epochs = 1
  c.train.num_steps = 0  # > 0 overrides num_epochs
  c.train.log_every = 50
  c.train.eval_every = 0  # 0 = only at the end
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  c.train.select_metric = ""  # a validation metric, e.g. "ctr/auc"
  c.train.select_mode = "max"
  c.train.patience = 0  # evaluations without improvement; 0 = never stop
  c.train.parallel = "jit"  # "jit" (shard_map on a mesh) or "pmap"
  c.train.num_devices = 0  # 0 = all devices of all hosts
  # "" = data-parallel only; "data:4,model:2" (or "model:2") also shards the
  # embedding tables' rows over a `model` axis (mtkd_jax/train/mesh.py).
  c.train.mesh = ""
  # Updates per compiled call: k > 1 runs k steps in one call (a lax.scan of
  # the train step over k batches), for steps so short that launching them
  # costs as much as running them (small batches on a GPU/TPU). The same
  # updates, logs, evaluations and checkpoints as k = 1 (mtkd_jax/train/
  # loop.py says how); parallel "jit" and single-seed runs only.
  c.train.steps_per_call = 1
  c.train.distributed = False  # jax.distributed.initialize() (multi-host)
  # Hand-launched multi-host runs (docs/multihost.md): all three or none
  # (none: auto-detected on TPU pods, SLURM, Open MPI).
  c.train.coordinator_address = ""  # "host0:1234"
  c.train.num_processes = 0
  c.train.process_id = -1
  c.train.tensorboard = True
  # Mixed precision: "bfloat16" runs forward and backward passes in bf16 on a
  # cast copy of the float32 master params (optimizer state stays float32);
  # meant for GPU/TPU; on a CPU it is usually slower than float32.
  c.train.compute_dtype = "float32"
  # Table gradients (mtkd_jax/accel/row_grads.py): "dense" (grad w.r.t. the
  # tables: [rows, d] per table, T of them for per-term gradient methods),
  # "rows" (w.r.t. the gathered rows: one compact [U, d] per table, exact;
  # much cheaper for gradient-level weighting methods), or "auto" (rows
  # iff optimizer.embedding is row-sparse, which needs them, or is the
  # row-fed dense Adam above, which takes them; 2-D tables only).
  c.train.embedding_grads = "auto"
  # CPU speed work (mtkd_jax/accel): "off" (plain optax and XLA, every
  # backend), "on", or "auto" (on for the CPU backend only). The same results
  # up to float rounding.
  c.train.accel = "off"

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 4096
  return c


def set_tasks(config, **tasks) -> None:
  """`set_tasks(c, ctr=("bce", 1.0))` -> c.tasks.ctr.loss/weight."""
  for name, (loss, weight) in tasks.items():
    config.tasks[name] = ml_collections.ConfigDict(
        {"loss": loss, "weight": float(weight)})


def distillation_variant(get_base, arg, *, teacher_model, student_model,
                         **distill):
  """The teacher / student / distilled-student configs of a KD experiment.

  Args:
    get_base: the base experiment's `get_config` (takes "smoke" or None).
    arg: "teacher", "student" or None (the distilled student), each with an
      optional "_smoke" suffix ("smoke" alone: the distilled student, small).
    teacher_model, student_model: `model.*` overrides of the two sizes.
    **distill: `distill.*` settings of the distilled student; its teacher is
      "{parent}/teacher__seed={seed}" (the same seed's teacher of a
      configs/sweeps/distillation.py sweep) unless given.
  """
  smoke = bool(arg) and arg.endswith("smoke")
  variant = arg.replace("_smoke", "").replace("smoke", "") if arg else ""
  if variant not in ("", "teacher", "student"):
    raise ValueError(f"Unknown config argument {arg!r}; valid: smoke, "
                     "teacher, student, teacher_smoke, student_smoke (or none: "
                     "the distilled student).")
  c = get_base("smoke" if smoke else None)
  for key, value in (teacher_model if variant == "teacher"
                     else student_model).items():
    c.model[key] = value
  if not variant:
    c.distill.teacher_workdirs = ("{parent}/teacher__seed={seed}",)
    for key, value in distill.items():
      c.distill[key] = value
  return c

