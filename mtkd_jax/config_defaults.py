"""The fields every experiment config has, with their defaults.

Experiment configs in configs/ call `default_config()` and set the data,
tasks and model; because configs are locked, every overridable key must exist
here, so `--config.train.batch_size=512` works for every experiment and a
misspelt key fails with a message naming it.
"""
import ml_collections

from mtkd_jax import weighting


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()  # dataset-specific; set by the config
  c.tasks = ml_collections.ConfigDict()  # {task: {loss: str, weight: float}}

  c.model = ml_collections.ConfigDict()
  c.model.name = "mmoe"
  c.model.num_experts = 8
  c.model.expert_hidden = (256, 128)
  c.model.bottom_hidden = (256, 128)
  c.model.tower_hidden = (64,)
  c.model.dropout = 0.0
  # PLE (Tang et al. 2020): CGC levels (1 = CGC) and experts per level.
  c.model.num_levels = 1
  c.model.num_shared_experts = 4
  c.model.num_specific_experts = 2  # per task
  # DSelect-k (Hazimeh et al. 2021): selectors per task, smooth-step width,
  # entropy regulariser weight (0 = off).
  c.model.dselect_k = 2
  c.model.dselect_gamma = 1.0
  c.model.dselect_entropy_reg = 0.0
  # ESMM (Ma et al. 2018): the (click, click-and-convert) task names.
  c.model.esmm_tasks = ("ctr", "ctcvr")
  # AITM (Xi et al. 2021): weight alpha of the calibrator loss.
  c.model.aitm_calibration_weight = 0.6
  # Cross-stitch (Misra et al. 2016): "identity" or "balanced" (0.9 / 0.1).
  c.model.cross_stitch_init = "balanced"
  # Behaviour sequences (datasets with spec.sequences, e.g. MovieLens with
  # data.history_len > 0): "mean", "gru", "cnn" (Caser) or "din" (target
  # attention); see mtkd_jax/models/sequence.py. Any model, any encoder.
  c.model.sequence_encoder = "mean"
  c.model.sequence_hidden = 32  # GRU state / Caser output width
  c.model.din_hidden = (36,)  # DIN activation-unit MLP widths
  # Two-tower retrieval tasks (model two_tower_mtl, models/retrieval.py):
  # both towers' hidden widths, the embedding width, the temperature tau.
  c.model.two_tower_hidden = (64,)
  c.model.retrieval_dim = 32
  c.model.retrieval_temperature = 0.05

  # Multi-task balancing: --config.weighting.name=pcgrad (see weighting/).
  c.weighting = weighting.default_config()
  c.weighting.diagnostics_every = 500  # per-term grad norms/cosines; 0 = off

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
  c.train.distributed = False  # jax.distributed.initialize() (multi-host)
  c.train.tensorboard = True

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 4096
  return c


def set_tasks(config, **tasks) -> None:
  """`set_tasks(c, ctr=("bce", 1.0))` -> c.tasks.ctr.loss/weight."""
  for name, (loss, weight) in tasks.items():
    config.tasks[name] = ml_collections.ConfigDict(
        {"loss": loss, "weight": float(weight)})
