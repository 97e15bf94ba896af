"""ESCM2, STEM and MetaHeac train on the Ali-CCP sample and MovieLens-100K
(tiny steps; the synthetic runs are configs/synthetic_{escm2,stem,metaheac}.py
in tests/test_configs.py)."""
import pytest

from configs import aliccp_mmoe
from mtkd_jax import train
from tests.conftest import REPO
from tests.conftest import ci_subset
from tests.data import test_ali
from tests.test_configs import load


def _run(config, tmp_path, steps=4):
  config.train.num_steps = steps
  config.train.eval_every = steps
  config.train.checkpoint_every = steps
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["best_step"] > 0
  return results["test"]


@pytest.mark.parametrize("model", ci_subset(["escm2", "stem", "metaheac"],
                                            keep=["escm2"]))
def test_trains_on_the_aliccp_sample(model, tmp_path):
  data_dir = test_ali._need(test_ali.ALICCP_DIR,  # pylint: disable=protected-access
                            test_ali.ali.ALICCP_FILES[1])
  config = aliccp_mmoe.get_config("smoke")
  config.data.data_dir = str(data_dir)
  config.data.cache_dir = str(tmp_path / "cache")
  config.model.name = model
  test = _run(config, tmp_path / "run")
  for task in ("ctr", "ctcvr"):
    assert 0.0 <= test[f"{task}/auc"] <= 1.0
  assert ("cvr/auc_clicked" in test) == (model == "escm2")


@pytest.mark.parametrize("model,counterfactual", ci_subset(
    [("escm2", "ips"), ("stem", None), ("metaheac", None)],
    keep=[("stem", None)]))
def test_trains_on_movielens(model, counterfactual, tmp_path, ml100k_dir,
                             ml100k_tfds_dir):
  # ESCM2 needs a funnel: like -> love; STEM and MetaHeac the default tasks.
  name = "movielens_esmm.py" if model == "escm2" else "movielens_mmoe.py"
  config = load(REPO / "configs" / name, "smoke")
  config.data.data_dir = str(ml100k_dir)
  config.data.tfds_dir = str(ml100k_tfds_dir)
  config.model.name = model
  if counterfactual:
    config.model.counterfactual = counterfactual
  test = _run(config, tmp_path)
  tasks = ("like", "love") if model == "escm2" else ("like",)
  for task in tasks:
    assert 0.0 <= test[f"{task}/auc"] <= 1.0
