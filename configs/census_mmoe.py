r"""python -m experiments.run --config configs/census_mmoe.py --config.data.data_dir=/path/to/census-income-kdd --workdir /tmp/mtkd/census_mmoe

MMoE on UCI Census-Income (KDD), the MMoE paper's benchmark (Ma et al., KDD
2018, section 5.2).

Smoke (seconds): --config configs/census_mmoe.py:smoke (needs data_dir too)

`data.data_dir` is the folder with census-income.test(.gz) and, for the
paper's split, census-income.data(.gz) (train file; the test file is cut 1:1
into validation / test). With the test file only, it is cut 60/20/20
(stratified by the joint labels, seed `data.split_seed`): AUCs are then not
comparable to published ones. `data.task_group` picks the paper's group 1
"income_marital" (tasks income > 50K, never married) or group 2
"education_marital" (at least college, never married); education and
marital status are never inputs. The tasks (BCE, weight 1) come from the
group, so `tasks` is left empty here. The checkpoint with the best
validation mean AUC is tested once.
"""
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = config_defaults.default_config()
  c.data.name = "census_income"
  c.data.data_dir = ""
  c.data.cache_dir = ""  # "" = ~/.cache/mtkd_jax/columns
  c.data.task_group = "income_marital"  # or "education_marital"
  c.data.split_mode = "auto"  # "official" | "single_file" | "auto"
  c.data.split_seed = 0
  c.data.min_count = 5  # rarer train values share the OOV id
  c.data.use_instance_weight = False
  c.data.max_examples = 0  # 0 = all
  c.data.embed_dim = 8

  c.model.name = "mmoe"
  c.model.num_experts = 8
  c.model.expert_hidden = (16,)
  c.model.bottom_hidden = (64,)  # for --config.model.name=shared_bottom
  c.model.tower_hidden = (8,)
  c.model.dropout = 0.0
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 1024
  c.train.num_epochs = 60  # early stopping (patience 5) ends it first
  c.train.eval_every = 59  # about one epoch of the 59.9k single-file rows
  c.train.checkpoint_every = 59
  c.train.log_every = 59
  c.train.patience = 5
  c.train.select_metric = "mean/auc"
  c.eval.batch_size = 4096

  if arg == "smoke":
    c.data.max_examples = 4096
    c.model.num_experts = 2
    c.model.expert_hidden = (8,)
    c.model.bottom_hidden = (8,)
    c.model.tower_hidden = (4,)
    c.train.batch_size = 256
    c.train.num_epochs = 2
    c.train.log_every = 4
    c.train.eval_every = 8
    c.train.checkpoint_every = 8
    c.train.patience = 0
    c.eval.batch_size = 512
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; valid: smoke.")
  return c
