r"""python -m experiments.run --config configs/movielens_latest_mmoe.py --config.data.data_dir=/path/to/ml-latest-small --workdir /tmp/mtkd/movielens_latest_mmoe

MMoE on MovieLens latest-small: rating (regression) + like (rating >= 4).

Smoke (seconds): --config configs/movielens_latest_mmoe.py:smoke (needs
data_dir too)

`data.data_dir` is the unzipped GroupLens folder (ratings.csv, movies.csv;
tags.csv and links.csv are not used). Splits are per user and in time order
(oldest 80% train, next 10% validation, newest 10% test), as for
MovieLens-100K; the checkpoint with the best validation like-AUC is tested
once. Reports test RMSE (rating) and AUC / GAUC / logloss (like).
"""
import ml_collections

from configs import movielens_mmoe


def get_config(arg=None):
  c = movielens_mmoe.get_config(arg)  # same tasks, model and schedule
  c.data = ml_collections.ConfigDict({
      "name": "movielens_latest_small",
      "data_dir": "",
      "cache_dir": "",  # "" = ~/.cache/mtkd_jax/columns
      "max_examples": c.data.max_examples,  # 0 = all
      "embed_dim": 16})
  if arg != "smoke":
    c.train.eval_every = 158  # about one epoch of 80.4k train rows
    c.train.checkpoint_every = 158
  return c
