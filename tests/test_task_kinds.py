"""Multiclass and two-tower retrieval tasks: specs, column checks, every
model's multiclass head, the in-batch logits of `TwoTowerMTL`, and smoke runs
of configs/movielens_multiclass.py and configs/movielens_retrieval.py."""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_flags

from mtkd_jax import config_defaults
from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax import train
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import movielens
from mtkd_jax.data import specs
from mtkd_jax.models import embedding
from mtkd_jax.models import retrieval
from mtkd_jax.train import step as step_lib
from tests.conftest import REPO

NUM_ITEMS = 7
GENRES = np.array([[0, 1, -1], [2, -1, -1], [3, 4, 5], [-1, -1, -1],
                   [1, -1, -1], [5, 0, -1], [4, -1, -1]], np.int32)


def make_spec(tasks, item_fields=("b", "g")):
  return specs.DatasetSpec(
      name="toy",
      sparse=(specs.SparseField("a", 5, 4),
              specs.SparseField("b", NUM_ITEMS, 3)),
      dense=(specs.DenseField("x"), specs.DenseField("y")),
      multi_hot=(specs.MultiHotField("g", 6, 3, 2),),
      tasks=tuple(tasks), item_fields=item_fields)


MULTICLASS = make_spec((specs.TaskSpec("cls", "multiclass", "softmax_ce",
                                       num_classes=3),
                        specs.TaskSpec("ctr", "binary", "bce")))
RETRIEVAL = make_spec((specs.TaskSpec("ctr", "binary", "bce"),
                       specs.TaskSpec("ret", "retrieval", "in_batch_softmax",
                                      item_field="b")))


def toy_batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  items = rng.integers(0, NUM_ITEMS, n).astype(np.int32)
  return {
      "sparse": np.stack([rng.integers(0, 5, n), items], 1).astype(np.int32),
      "dense": rng.normal(size=(n, 2)).astype(np.float32),
      "multi_hot/g": GENRES[items],  # the item's features, as the catalogue
      "labels/cls": rng.integers(0, 3, n).astype(np.float32),
      "labels/ctr": rng.integers(0, 2, n).astype(np.float32),
      "labels/ret": np.ones(n, np.float32),
      "weights": np.ones(n, np.float32),
  }


def model_cfg(name):
  cfg = config_defaults.default_config().model
  cfg.name = name
  cfg.num_experts, cfg.expert_hidden = 3, (8, 6)
  cfg.bottom_hidden, cfg.tower_hidden = (8, 6), (5,)
  cfg.num_shared_experts, cfg.num_specific_experts = 2, 1
  cfg.two_tower_hidden, cfg.retrieval_dim = (6,), 4
  return cfg


def test_spec_validation():
  with pytest.raises(errors.ConfigError, match="num_classes > 1"):
    specs.TaskSpec("r", "multiclass", "softmax_ce")
  with pytest.raises(errors.ConfigError, match="only multiclass"):
    specs.TaskSpec("r", "binary", "bce", num_classes=3)
  with pytest.raises(errors.ConfigError, match="retrieval tasks need one"):
    specs.TaskSpec("r", "retrieval", "in_batch_softmax")
  with pytest.raises(errors.ConfigError, match="not sparse or multi-hot"):
    make_spec((specs.TaskSpec("ctr", "binary", "bce"),), ("b", "nope"))
  with pytest.raises(errors.ConfigError, match="listed in item_fields"):
    make_spec(RETRIEVAL.tasks, ("g",))


@pytest.mark.parametrize("label,row", [(3.0, 2), (1.5, 2), (-1.0, 2)])
def test_multiclass_labels_are_checked(label, row):
  batch = toy_batch(4)
  batch["labels/cls"] = np.array([0, 2, label, 1], np.float32)
  with pytest.raises(errors.DataError,
                     match=rf"train: multiclass task 'cls' row {row} .*\[0, 3\)"):
    columns_lib.validate_columns(MULTICLASS, batch, "train")
  batch["labels/cls"] = np.array([0, 2, 1, 1], np.float32)
  columns_lib.validate_columns(MULTICLASS, batch, "train")


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "omoe", "ple",
                                  "dselect_k", "cross_stitch", "single_task"])
def test_every_model_has_multiclass_logits(name):
  model = models.build_model(MULTICLASS, model_cfg(name))
  batch = toy_batch()
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  outputs, _ = model.apply({"params": params}, batch)
  assert outputs["cls"].shape == (8, 3) and outputs["ctr"].shape == (8,)
  sums, count = step_lib.task_loss_sums(outputs, batch, MULTICLASS.tasks)
  assert count == 8 and all(np.isfinite(float(v)) for v in sums.values())


def test_item_and_user_columns_follow_the_embedding_layout():
  # Width groups ascending: b (3) first, then a (4); then g (2); then dense.
  item, user = retrieval.item_and_user_columns(RETRIEVAL)
  np.testing.assert_array_equal(item, [0, 1, 2, 7, 8])
  np.testing.assert_array_equal(user, [3, 4, 5, 6, 9, 10])
  x = embedding.FeatureEmbedding(RETRIEVAL)
  batch = toy_batch()
  variables = x.init(jax.random.PRNGKey(0), batch)
  out = x.apply(variables, batch)
  table = variables["params"]["sparse_table_d3"]
  np.testing.assert_allclose(out[:, :3], table[batch["sparse"][:, 1]])


def _catalogue():
  sparse = np.zeros((NUM_ITEMS, 2), np.int32)
  sparse[:, 1] = np.arange(NUM_ITEMS)
  return retrieval.Catalogue({"sparse": sparse,
                              "dense": np.zeros((NUM_ITEMS, 2), np.float32),
                              "multi_hot/g": GENRES})


def test_two_tower_in_batch_logits_and_catalogue_scores():
  model = models.build_model(RETRIEVAL, model_cfg("two_tower_mtl"),
                             {"catalogue": _catalogue().columns})
  batch = toy_batch(6, seed=3)
  batch["sparse"][:, 1] = [0, 2, 2, 5, 1, 6]  # rows 1 and 2: the same item
  batch["multi_hot/g"] = GENRES[batch["sparse"][:, 1]]
  batch["weights"] = np.array([1, 1, 1, 1, 1, 0], np.float32)  # row 5 pads
  logq = np.log(np.array([0.1, 0.2, 0.2, 0.3, 0.1, 0.1], np.float32))
  batch["item_logq/ret"] = logq
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  train_out, _ = model.apply({"params": params}, batch, train=True,
                             rngs={"dropout": jax.random.PRNGKey(1)})
  eval_out, _ = model.apply({"params": params}, batch, train=False)
  s = np.asarray(train_out["ret"])
  assert s.shape == (6, 6) and eval_out["ret"].shape == (6, NUM_ITEMS)
  assert eval_out["ctr"].shape == train_out["ctr"].shape == (6,)
  # Padding column and accidental hits are masked; the diagonal is not.
  assert (s[:, 5] == retrieval.MASKED).all()
  assert s[1, 2] == s[2, 1] == retrieval.MASKED
  # Unmasked entries: cosine / tau - log q_j, and the catalogue scores are
  # the same cosines / tau (no dropout: dropout = 0) without the logQ term.
  items = batch["sparse"][:, 1]
  for i in range(5):
    for j in range(5):
      if s[i, j] == retrieval.MASKED:
        continue
      want = eval_out["ret"][i, items[j]] - logq[j]
      assert s[i, j] == pytest.approx(float(want), rel=1e-4, abs=1e-4)
  assert np.abs(np.asarray(eval_out["ret"])).max() <= 1 / 0.05 + 1e-3
  # The loss is finite and moves both towers and the shared embedding.
  def loss(p):
    out, _ = model.apply({"params": p}, batch, train=True)
    sums, count = step_lib.task_loss_sums(out, batch, RETRIEVAL.tasks)
    return sums["ret"] / count
  grads = jax.grad(loss)(params)
  assert np.isfinite(float(loss(params)))
  for name in ("user_tower_ret", "item_tower_ret", "embedding"):
    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[name]))
    assert norm > 0, name


def test_retrieval_needs_the_two_tower_model():
  with pytest.raises(errors.ConfigError, match="two_tower_mtl"):
    models.build_model(RETRIEVAL, model_cfg("mmoe"))


# ---------------------------------------------------------------------------
# MovieLens-100K: loader options and smoke runs of both configs.
# ---------------------------------------------------------------------------


def load_config(name, ml100k_dir, tfds_dir):
  c = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      "config", str(REPO / "configs" / name)).get_config("smoke")
  c.data.data_dir, c.data.tfds_dir = str(ml100k_dir), str(tfds_dir)
  return c


def test_movielens_rating_classes_and_retrieval_columns(ml100k_dir,
                                                        ml100k_tfds_dir):
  cfg = types.SimpleNamespace(data_dir=str(ml100k_dir),
                              tfds_dir=str(ml100k_tfds_dir), max_examples=0,
                              rating_classes=True, retrieval=True)
  splits = movielens.load(cfg)
  assert splits.spec.task_names == ("rating_class", "like", "retrieval")
  item_col = movielens.SPARSE_FIELDS.index("item_id")
  for split in ("train", "validation", "test"):
    cols = splits.split(split)
    assert set(np.unique(cols["labels/rating_class"])) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(cols["labels/like"],
                                  cols["labels/rating_class"] >= 3)
    assert (cols["labels/retrieval"] == 1).all()
  train_items = splits.train["sparse"][:, item_col]
  counts = np.bincount(train_items, minlength=1682)
  np.testing.assert_allclose(
      np.exp(splits.train["item_logq/retrieval"]),
      counts[train_items] / len(train_items), rtol=1e-5)
  cat = splits.extras["catalogue"]
  assert cat["sparse"].shape == (1682, 7)
  np.testing.assert_array_equal(cat["sparse"][:, item_col], np.arange(1682))
  t = splits.test
  np.testing.assert_array_equal(cat["multi_hot/genres"][t["sparse"][:, item_col]],
                                t["multi_hot/genres"])
  seen_test = splits.extras["test"]["seen/retrieval"]
  v = splits.validation
  assert seen_test[v["user_id"], v["sparse"][:, item_col]].all()
  assert seen_test[splits.train["user_id"], train_items].all()
  assert not seen_test[t["user_id"], t["sparse"][:, item_col]].any()
  assert seen_test.sum() == len(train_items) + len(v["user_id"])


def test_movielens_multiclass_smoke_trains(ml100k_dir, ml100k_tfds_dir,
                                           tmp_path):
  config = load_config("movielens_multiclass.py", ml100k_dir, ml100k_tfds_dir)
  results = train.train_and_evaluate(config, str(tmp_path))
  test = results["test"]
  assert results["best_step"] > 0
  for key in ("rating_class/accuracy", "rating_class/cross_entropy",
              "rating_class/macro_auc", "like/auc"):
    assert math.isfinite(test[key]), key
  assert test["rating_class/cross_entropy"] < math.log(5) + 0.1


def test_movielens_retrieval_smoke_trains(ml100k_dir, ml100k_tfds_dir,
                                          tmp_path):
  config = load_config("movielens_retrieval.py", ml100k_dir, ml100k_tfds_dir)
  results = train.train_and_evaluate(config, str(tmp_path))
  test = results["test"]
  assert results["best_step"] > 0
  for key in ("retrieval/recall_at_10", "retrieval/recall_at_50",
              "retrieval/ndcg_at_10", "retrieval/mrr", "rating/rmse",
              "like/auc"):
    assert math.isfinite(test[key]), key
  assert 0 < test["retrieval/mrr"] <= 1
  assert test["retrieval/mean_rank"] < 1682
