r"""python -m experiments.run --config configs/movielens_multiclass.py --config.data.data_dir=/path/to/ml-100k --workdir /tmp/mtkd/movielens_multiclass

MMoE on MovieLens-100K with the rating as a 5-class task: rating_class
(multiclass, class = stars - 1, softmax cross-entropy) + like (rating >= 4,
binary).

Smoke (seconds): --config configs/movielens_multiclass.py:smoke

Same data and split as configs/movielens_mmoe.py (`data.rating_classes=True`
swaps the regression task "rating" for "rating_class"). The checkpoint with
the best validation like-AUC is tested once. Reports test accuracy,
cross-entropy and macro one-vs-rest AUC (rating_class) and AUC / GAUC /
logloss (like). Any model: --config.model.name=ple etc.
"""
from configs import movielens_mmoe
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = movielens_mmoe.get_config(arg)
  c.data.rating_classes = True
  c.tasks = config_defaults.default_config().tasks
  config_defaults.set_tasks(c, rating_class=("softmax_ce", 1.0),
                            like=("bce", 1.0))
  return c
