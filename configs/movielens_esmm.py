r"""python -m experiments.run --config configs/movielens_esmm.py --config.data.data_dir=/path/to/ml-100k --workdir /tmp/mtkd/movielens_esmm

ESMM (Ma et al., SIGIR 2018) on MovieLens-100K's like -> love funnel.

Smoke (seconds): --config configs/movielens_esmm.py:smoke
AITM (Xi et al., KDD 2021) on the same tasks: --config.model.name=aitm.

`data.task_group="like_love"`: tasks like (rating >= 4) then love
(rating == 5), both binary over every rating. love implies like, so the pair
reads as a funnel: like plays ESMM's click and love its click-and-convert
(pLove = pLike * p(love | like)); the "CVR" tower, p(love | like), is
learnt only through pLove over all ratings. Besides like/love AUC, GAUC and
logloss, the test reports cvr/auc_clicked: p(love | like) scored on the
liked rows only (5 against 4 stars), the ESMM paper's CVR evaluation.
Same data, split and network sizes as configs/movielens_mmoe.py (each tower
is bottom_hidden + tower_hidden); the checkpoint with the best validation
mean AUC of like and love is tested once.
"""
import ml_collections

from configs import movielens_mmoe
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = movielens_mmoe.get_config(arg)
  c.data.task_group = "like_love"
  c.tasks = ml_collections.ConfigDict()
  config_defaults.set_tasks(c, like=("bce", 1.0), love=("bce", 1.0))
  c.model.name = "esmm"
  c.model.funnel_tasks = ("like", "love")
  c.train.select_metric = "mean/auc"
  return c
