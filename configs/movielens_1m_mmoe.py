r"""python -m experiments.run --config configs/movielens_1m_mmoe.py --config.data.data_dir=/path/to/ml-1m --workdir /tmp/mtkd/movielens_1m_mmoe

MMoE on MovieLens-1M: rating (regression) + like (rating >= 4, binary).

Smoke (seconds): --config configs/movielens_1m_mmoe.py:smoke (needs data_dir
too)

`data.data_dir` is the unzipped GroupLens folder (ratings.dat, users.dat,
movies.dat); an empty value downloads the official zip. Features, tasks and
splits are those of MovieLens-100K (configs/movielens_mmoe.py): per user and
in time order (oldest 80% train, next 10% validation, newest 10% test); the
checkpoint with the best validation like-AUC is tested once. Reports test
RMSE (rating) and AUC / GAUC / logloss (like).
"""
from configs import movielens_mmoe


def get_config(arg=None):
  c = movielens_mmoe.get_config(arg)  # same data options, model, schedule
  c.data.name = "movielens_1m"
  if arg != "smoke":
    c.train.eval_every = 1563  # about one epoch of ~800k train rows
    c.train.checkpoint_every = 1563
  return c
