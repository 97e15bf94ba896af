r"""python -m experiments.run --config configs/movielens_retrieval.py --config.data.data_dir=/path/to/ml-100k --workdir /tmp/mtkd/movielens_retrieval

Ranking and retrieval together on MovieLens-100K (model two_tower_mtl,
mtkd_jax/models/retrieval.py): one shared embedding table feeds an MMoE for
rating (regression) + like (rating >= 4, binary) and a two-tower retrieval
head (user tower: user fields; item tower: item_id, release decade, genres;
L2-normalised, temperature `model.temperature`) trained with the
in-batch softmax and the logQ correction of Yi et al. (RecSys 2019).

Smoke (seconds): --config configs/movielens_retrieval.py:smoke

Every rating is a positive interaction for retrieval. Evaluation ranks each
held-out rating's item among all 1,682 items, leaving out the items the user
rated in earlier splits; reports retrieval/recall_at_K, ndcg_at_K, hr_at_K
(K = 10, 50) and mrr next to rating RMSE and like AUC / GAUC. The checkpoint with the
best validation retrieval/recall_at_50 is tested once.
"""
from configs import movielens_mmoe
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = movielens_mmoe.get_config(arg)
  c.data.retrieval = True
  c.model.name = "two_tower_mtl"
  c.model.two_tower_hidden = (64,)
  c.model.retrieval_dim = 32
  c.model.temperature = 0.05
  config_defaults.set_tasks(c, retrieval=("in_batch_softmax", 1.0))
  c.train.num_epochs = 20
  c.train.patience = 4
  c.train.select_metric = "retrieval/recall_at_50"
  if arg == "smoke":
    c.model.two_tower_hidden = (16,)
    c.model.retrieval_dim = 8
    c.train.num_epochs = 2
  return c
