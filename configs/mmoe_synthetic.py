r"""python -m experiments.run --config configs/mmoe_synthetic.py --workdir /tmp/mtkd/mmoe_synthetic --config.data.correlation=0.5

The MMoE paper's synthetic regression study (Ma et al., KDD 2018, §3.2).

Smoke (seconds): --config configs/mmoe_synthetic.py:smoke

Two regression tasks y1, y2 whose label correlation is set by
`data.correlation` = p in [-1, 1]; switch `--config.model.name=shared_bottom`
to compare. Selects on the validation mean RMSE of the two tasks.
"""
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = config_defaults.default_config()
  c.data.name = "mmoe_synthetic"
  c.data.num_examples = 12_000  # the paper: 10k train, 1k validation, 1k test
  c.data.seed = 0
  c.data.correlation = 0.5
  c.data.input_dim = 100
  c.data.num_sin = 10
  c.data.c = 1.0
  c.data.noise_std = 0.01
  c.data.validation_fraction = 1 / 12
  c.data.test_fraction = 1 / 12
  config_defaults.set_tasks(c, y1=("mse", 1.0), y2=("mse", 1.0))

  c.model.name = "mmoe"
  c.model.num_experts = 8
  c.model.expert_hidden = (16,)
  c.model.bottom_hidden = (113,)  # about MMoE's parameter count
  c.model.tower_hidden = (8,)
  c.train.batch_size = 128
  # 100 epochs with a cosine decay from 3e-3 train MMoE to a plateau
  # (validation RMSE within 1% over the last 1,600 steps); 25 epochs at a
  # constant 1e-3 stopped while it was still falling.
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.train.num_epochs = 100
  c.train.eval_every = 800
  c.train.checkpoint_every = 1600
  c.train.select_metric = "mean/rmse"
  c.train.select_mode = "min"
  c.eval.batch_size = 1024

  if arg == "smoke":
    c.data.num_examples = 2_400
    c.train.num_epochs = 2
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; valid: smoke.")
  return c
