r"""python -m experiments.run --config configs/movielens_mmoe.py --config.data.data_dir=/path/to/ml-100k --workdir /tmp/mtkd/movielens_mmoe

MMoE on MovieLens-100K: rating (regression) + like (rating >= 4, binary).

Smoke (seconds): --config configs/movielens_mmoe.py:smoke

`data.data_dir` is the unzipped GroupLens folder (u.data, u.user, u.item); an
empty value downloads the official zip. Splits are per user and in time order
(oldest 80% train, next 10% validation, newest 10% test); the checkpoint with
the best validation like-AUC is tested once. Reports test RMSE (rating) and
AUC / GAUC / logloss (like).
"""
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = config_defaults.default_config()
  c.data.name = "movielens_100k"
  c.data.data_dir = ""
  c.data.tfds_dir = ""  # "" = ~/.cache/mtkd_jax/tfds
  c.data.max_examples = 0  # 0 = all
  c.data.embed_dim = 16
  c.data.history_len = 0  # no behaviour sequence; see movielens_sequence.py
  c.data.task_group = "rating_like"  # "like_love": see movielens_esmm.py
  config_defaults.set_tasks(c, rating=("mse", 1.0), like=("bce", 1.0))

  c.model.name = "mmoe"
  c.model.num_experts = 4
  c.model.expert_hidden = (128, 64)
  c.model.bottom_hidden = (128, 64)
  c.model.tower_hidden = (32,)
  c.model.dropout = 0.1
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 512
  c.train.num_epochs = 10
  c.train.eval_every = 156  # about one epoch of 79.6k train rows
  c.train.checkpoint_every = 156
  c.train.patience = 3
  c.train.select_metric = "like/auc"
  c.eval.batch_size = 4096

  if arg == "smoke":
    c.data.max_examples = 4096
    c.model.num_experts = 2
    c.model.expert_hidden = (16,)
    c.model.bottom_hidden = (16,)
    c.model.tower_hidden = (8,)
    c.train.batch_size = 256
    c.train.num_epochs = 2
    c.train.log_every = 4
    c.train.eval_every = 8
    c.train.checkpoint_every = 8
    c.eval.batch_size = 512
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; valid: smoke.")
  return c
