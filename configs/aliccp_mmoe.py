r"""python -m experiments.run --config configs/aliccp_mmoe.py --config.data.data_dir=/path/to/ali-ccp --workdir /tmp/mtkd/aliccp_mmoe

MMoE on Ali-CCP (the ESMM paper's data) in torch-rechub's CSV format.

Smoke (seconds): --config configs/aliccp_mmoe.py:smoke (needs data_dir too;
torch-rechub's sample files work)

`data.data_dir` holds ali_ccp_train.csv, ali_ccp_val.csv, ali_ccp_test.csv
(made by torch-rechub's preprocess_ali_ccp.py from Tianchi dataset 408) or
the ali_ccp_*_sample.csv files. Tasks over the impression space: ctr (click)
and ctcvr (click and purchase), as ESMM needs. 23 sparse id fields and 8
min-max scaled dense ones. The checkpoint with the best validation ctcvr AUC
is tested once.
"""
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = config_defaults.default_config()
  c.data.name = "ali_ccp"
  c.data.data_dir = ""
  c.data.cache_dir = ""  # "" = ~/.cache/mtkd_jax/columns
  c.data.max_examples = 0  # 0 = all
  c.data.embed_dim = 8
  config_defaults.set_tasks(c, ctr=("bce", 1.0), ctcvr=("bce", 1.0))

  c.model.name = "mmoe"
  c.model.num_experts = 8
  c.model.expert_hidden = (128, 64)
  c.model.bottom_hidden = (128, 64)  # for --config.model.name=shared_bottom
  c.model.tower_hidden = (32,)
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 4096
  c.train.num_epochs = 1  # ~42M train rows: ~10k steps
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.train.log_every = 200
  c.train.patience = 3
  c.train.select_metric = "ctcvr/auc"
  c.eval.batch_size = 16384

  if arg == "smoke":
    c.data.max_examples = 2048
    c.data.embed_dim = 4
    c.model.num_experts = 2
    c.model.expert_hidden = (8,)
    c.model.bottom_hidden = (8,)
    c.model.tower_hidden = (4,)
    c.train.batch_size = 32
    c.train.num_epochs = 2
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.checkpoint_every = 4
    c.train.patience = 0
    c.eval.batch_size = 64
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; valid: smoke.")
  return c
