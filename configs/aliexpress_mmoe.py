r"""python -m experiments.run --config configs/aliexpress_mmoe.py --config.data.data_dir=/path/to/AliExpress_US --workdir /tmp/mtkd/aliexpress_mmoe

MMoE on one AliExpress country (PLE / AITM / MTReclib data) in MTReclib's
CSV format.

Smoke (seconds): --config configs/aliexpress_mmoe.py:smoke (needs data_dir
too; the torch-rechub samples in shared/data/samples/torch-rechub/aliexpress
work)

`data.data_dir` is a country folder (AliExpress_NL, _ES, _FR or _US, made by
MTReclib's data/preprocess.py from Tianchi dataset 74690) with train.csv and
test.csv, or the aliexpress_{train,test}_sample.csv files. Validation is a
seeded `data.val_fraction` of train's search ids (whole page views). Tasks
over the impression space: ctr (click) and ctcvr (click and conversion). 16
sparse id fields and 63 normalised dense ones. The checkpoint with the best
validation ctcvr AUC is tested once; MTReclib reports test CTR / CTCVR AUC.
"""
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = config_defaults.default_config()
  c.data.name = "aliexpress"
  c.data.data_dir = ""
  c.data.cache_dir = ""  # "" = ~/.cache/mtkd_jax/columns
  c.data.val_fraction = 0.1
  c.data.split_seed = 0
  c.data.max_examples = 0  # 0 = all
  c.data.embed_dim = 16
  config_defaults.set_tasks(c, ctr=("bce", 1.0), ctcvr=("bce", 1.0))

  c.model.name = "mmoe"
  c.model.num_experts = 8
  c.model.expert_hidden = (256, 128)
  c.model.bottom_hidden = (256, 128)  # for --config.model.name=shared_bottom
  c.model.tower_hidden = (64,)
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 2048
  c.train.num_epochs = 3  # ~18M train rows per country: ~8k steps an epoch
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
