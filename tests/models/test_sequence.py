"""Behaviour-sequence encoders, their wiring and the MovieLens history column.

Encoders are checked against by-hand references (mean, DIN weights, Caser,
a step-by-step GRUCell loop) and for padding invariance; the MovieLens tests
check that each history holds exactly the user's earlier items.
"""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import movielens_sequence
from mtkd_jax import config_defaults
from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax import train
from mtkd_jax.data import columns as columns_lib
from mtkd_jax.data import movielens
from mtkd_jax.data import specs
from mtkd_jax.models import embedding
from mtkd_jax.models import sequence
from tests.conftest import ML100K
from tests.conftest import ci_subset

ENCODERS = sorted(sequence.SEQUENCE_ENCODERS)
D, L = 4, 5
# Left-padded histories (most recent last): lengths 0, 1, 3, 5.
IDS = np.array([[-1, -1, -1, -1, -1],
                [-1, -1, -1, -1, 7],
                [-1, -1, 2, 9, 2],
                [3, 1, 4, 1, 5]], np.int32)


def _spec(encoder="mean", shares="item", max_len=L, **kw):
  seq = specs.SequenceField("hist", 10, max_len, D, shares=shares,
                            encoder=encoder, hidden=6, din_hidden=(5,), **kw)
  return specs.DatasetSpec(
      name="toy",
      sparse=(specs.SparseField("user", 3, 3), specs.SparseField("item", 10, D),
              specs.SparseField("genre", 4, D)),
      dense=(), tasks=(specs.TaskSpec("ctr", "binary", "bce"),
                       specs.TaskSpec("ctcvr", "binary", "bce")),
      sequences=(seq,))


def _batch(ids=IDS, target=(1, 7, 2, 5)):
  n = len(ids)
  return {"sparse": np.stack([np.arange(n) % 3, np.asarray(target),
                              np.arange(n) % 4], axis=1).astype(np.int32),
          "dense": np.zeros((n, 0), np.float32),
          "sequence/hist": np.asarray(ids, np.int32),
          "weights": np.ones(n, np.float32)}


def _inputs(ids=IDS, seed=0):
  """(emb [B, L, D] with garbage under padding, mask, target [B, D])."""
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=ids.shape + (D,)).astype(np.float32)
  target = rng.normal(size=(len(ids), D)).astype(np.float32)
  return jnp.asarray(emb), jnp.asarray(ids >= 0), jnp.asarray(target)


def _encoder(name, **kw):
  field = specs.SequenceField("hist", 10, L, D, shares="item", encoder=name,
                              hidden=6, din_hidden=(5,), **kw)
  return sequence.make_encoder(field)


def _pad_left(x, extra, value):
  widths = [(0, 0), (extra, 0)] + [(0, 0)] * (x.ndim - 2)
  return jnp.pad(x, widths, constant_values=value)


# --- Padding invariance. ------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_padding_never_changes_the_output(name):
  enc = _encoder(name)
  emb, mask, target = _inputs()
  params5 = enc.init(jax.random.PRNGKey(0), emb, mask, target)
  out = np.asarray(enc.apply(params5, emb, mask, target))
  expected_width = 6 if name in ("gru", "cnn") else D
  assert out.shape == (len(IDS), expected_width)
  # Other values under the padding.
  noise = jax.random.normal(jax.random.PRNGKey(5), emb.shape) * 100.0
  other = jnp.where(mask[..., None], emb, noise)
  np.testing.assert_allclose(enc.apply(params5, other, mask, target), out,
                             rtol=1e-5, atol=1e-6)
  # Three more padding columns on the left (Caser's vertical filters have one
  # weight per position: the real items keep theirs, the new ones are 0-rows).
  emb3 = _pad_left(other, 3, 9.0)
  mask3 = _pad_left(mask, 3, False)
  params8 = enc.init(jax.random.PRNGKey(0), emb3, mask3, target)
  if name == "cnn":
    params8 = jax.tree.map(lambda x: x, params8)
    params8["params"]["vertical"] = params8["params"]["vertical"].at[3:].set(
        params5["params"]["vertical"])
  np.testing.assert_allclose(enc.apply(params8, emb3, mask3, target), out,
                             rtol=1e-5, atol=1e-6)
  # The same items right-padded instead.
  order = jnp.argsort(~mask, axis=1, stable=True)
  right = jnp.take_along_axis(other, order[..., None], axis=1)
  right_mask = jnp.take_along_axis(mask, order, axis=1)
  assert not np.array_equal(right_mask, mask)
  np.testing.assert_allclose(enc.apply(params5, right, right_mask, target), out,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ENCODERS)
def test_padding_ids_do_not_matter_in_the_embedding_layer(name):
  """Through FeatureEmbedding: -1 vs other negative ids, and longer L."""
  module = embedding.FeatureEmbedding(_spec(name))
  batch = _batch()
  params = module.init(jax.random.PRNGKey(0), batch)
  out = module.apply(params, batch)
  other = dict(batch, **{"sequence/hist": np.where(IDS < 0, -7, IDS)})
  np.testing.assert_allclose(module.apply(params, other), out, rtol=1e-6)
  if name != "cnn":  # parameters do not depend on L
    longer = embedding.FeatureEmbedding(_spec(name, max_len=L + 2))
    batch2 = dict(batch, **{"sequence/hist": np.pad(IDS, [(0, 0), (2, 0)],
                                                    constant_values=-1)})
    np.testing.assert_allclose(longer.apply(params, batch2), out, rtol=1e-5,
                               atol=1e-6)


# --- Each encoder against a reference. ----------------------------------------


def test_mean_pooling_by_hand():
  emb, mask, _ = _inputs()
  out = np.asarray(sequence.MeanPooling().apply({}, emb, mask))
  e, m = np.asarray(emb), np.asarray(mask)
  np.testing.assert_allclose(out[0], 0.0)
  np.testing.assert_allclose(out[1], e[1, 4], rtol=1e-6)
  np.testing.assert_allclose(out[2], e[2, 2:].mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(out[3], e[3].mean(axis=0), rtol=1e-6)
  assert m.sum() == 9


def test_gru_final_state_equals_step_by_step_loop():
  enc = _encoder("gru")
  emb, mask, target = _inputs()
  params = enc.init(jax.random.PRNGKey(1), emb, mask, target)
  out = np.asarray(enc.apply(params, emb, mask, target))
  cell = nn.GRUCell(6)
  cell_params = {"params": params["params"]["cell"]}
  for b in range(len(IDS)):
    h = jnp.zeros((6,))
    for t in np.flatnonzero(IDS[b] >= 0):  # the real items, in time order
      h, _ = cell.apply(cell_params, h, emb[b, t])
    np.testing.assert_allclose(out[b], h, rtol=1e-5, atol=1e-6, err_msg=str(b))
  np.testing.assert_allclose(out[0], 0.0)  # no history: the initial state


def test_din_weights_by_hand():
  """One hidden unit layer of width 2, fixed weights, d = 2, L = 3."""
  enc = sequence.DINAttention(din_hidden=(2,))
  e = np.array([[[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]]], np.float32)
  mask = np.array([[False, True, True]])
  t = np.array([[0.5, -1.0]], np.float32)
  kernel = np.arange(16, dtype=np.float32).reshape(8, 2) / 10 - 0.7
  params = {"params": {
      "dense_0": {"kernel": kernel, "bias": np.array([0.1, -0.2], np.float32)},
      "prelu_0": {"negative_slope": np.array(0.25, np.float32)},
      "out": {"kernel": np.array([[1.5], [-2.0]], np.float32),
              "bias": np.array([0.3], np.float32)}}}
  weights = np.asarray(enc.apply(params, e, mask, t,
                                 method=sequence.DINAttention.attention_weights))
  expected = []
  for i in range(3):
    x = np.concatenate([e[0, i], t[0], e[0, i] - t[0], e[0, i] * t[0]])
    h = x @ kernel + [0.1, -0.2]
    h = np.where(h >= 0, h, 0.25 * h)
    expected.append(float(h @ [1.5, -2.0] + 0.3) if mask[0, i] else 0.0)
  np.testing.assert_allclose(weights[0], expected, rtol=1e-5)
  assert expected[1] != 0 and expected[2] != 0
  out = np.asarray(enc.apply(params, e, mask, t))
  np.testing.assert_allclose(out[0], expected[1] * e[0, 1] + expected[2] * e[0, 2],
                             rtol=1e-5)
  with pytest.raises(errors.ConfigError, match="shares"):
    enc.apply(params, e, mask, None)


def test_cnn_shape_and_masking_by_hand():
  enc = _encoder("cnn")
  emb, mask, target = _inputs()
  params = enc.init(jax.random.PRNGKey(2), emb, mask, target)
  out = np.asarray(enc.apply(params, emb, mask, target))
  assert out.shape == (len(IDS), 6) and (out >= 0).all()
  p = jax.tree.map(np.asarray, params["params"])
  e, m = np.asarray(emb), np.asarray(mask)
  for b in range(len(IDS)):
    x = e[b] * m[b][:, None]  # real items are already the last ones
    n = int(m[b].sum())
    pooled = []
    for h in sequence.CASER_HEIGHTS:
      k, bias = p[f"horizontal_h{h}"]["kernel"], p[f"horizontal_h{h}"]["bias"]
      windows = [np.maximum(np.einsum("jd,jdf->f", x[s:s + h], k) + bias, 0)
                 for s in range(L - n, L - h + 1)]  # inside the real items
      pooled.append(np.max(windows, axis=0) if windows else np.zeros(6))
    vertical = np.einsum("ld,lv->vd", x, p["vertical"]).reshape(-1)
    z = np.concatenate(pooled + [vertical])
    ref = np.maximum(z @ p["fc"]["kernel"] + p["fc"]["bias"], 0)
    np.testing.assert_allclose(out[b], ref, rtol=1e-4, atol=1e-5,
                               err_msg=str(b))


# --- Embedding layer wiring. --------------------------------------------------


def test_history_and_target_share_embedding_rows():
  spec = _spec("mean")
  module = embedding.FeatureEmbedding(spec)
  ids = np.full((3, L), -1, np.int32)
  ids[:, -1] = [7, 2, 0]  # one history item each: k
  batch = _batch(ids, target=(7, 2, 0))  # target item k
  params = module.init(jax.random.PRNGKey(0), batch)["params"]
  assert set(params) == {"sparse_table_d3", "sparse_table_d4"}  # no own table
  out = np.asarray(module.apply({"params": params}, batch))
  # Layout: user (3) | item, genre (width-4 group) | history mean (4).
  item_emb, history = out[:, 3:7], out[:, 11:15]
  np.testing.assert_array_equal(history, item_emb)
  np.testing.assert_array_equal(item_emb,
                                np.asarray(params["sparse_table_d4"])[[7, 2, 0]])
  # Gradients of a history lookup land on the item's row of the shared table.
  grads = jax.grad(lambda p: module.apply({"params": p}, batch)[:, 11:].sum())(
      params)
  rows = np.flatnonzero(np.abs(np.asarray(grads["sparse_table_d4"])).sum(1))
  np.testing.assert_array_equal(rows, [0, 2, 7])


def test_unshared_sequence_has_its_own_table():
  module = embedding.FeatureEmbedding(_spec("mean", shares=""))
  params = module.init(jax.random.PRNGKey(0), _batch())["params"]
  assert params["sequence_table_hist"].shape == (10, D)


def test_spec_validates_the_shared_field():
  with pytest.raises(errors.ConfigError, match="'nope', which is not a sparse"):
    _spec(shares="nope")
  with pytest.raises(errors.ConfigError, match="embed_dim 3.*both must match"):
    specs.DatasetSpec("toy", (specs.SparseField("item", 10, 4),), (), (),
                      sequences=(specs.SequenceField("h", 10, 5, 3, "item"),))
  with pytest.raises(errors.ConfigError, match="max_len 0"):
    specs.SequenceField("h", 10, 0)


def test_columns_validation_names_field_and_row():
  spec = _spec()
  cols = dict(_batch(), **{"labels/ctr": np.zeros(4, np.float32),
                           "labels/ctcvr": np.zeros(4, np.float32)})
  columns_lib.validate_columns(spec, cols, "train")
  bad = dict(cols, **{"sequence/hist": np.where(IDS == 9, 10, IDS)})
  with pytest.raises(errors.DataError, match="train: field 'hist' row 2"):
    columns_lib.validate_columns(spec, bad, "train")
  with pytest.raises(errors.DataError, match=r"'hist' must be int\[N, 5\]"):
    columns_lib.validate_columns(
        spec, dict(cols, **{"sequence/hist": IDS[:, 1:]}), "train")
  missing = {k: v for k, v in cols.items() if k != "sequence/hist"}
  with pytest.raises(errors.DataError, match="missing columns.*sequence/hist"):
    columns_lib.validate_columns(spec, missing, "train")


def _model_cfg(name, encoder):
  cfg = config_defaults.default_config().model
  cfg.name, cfg.sequence_encoder = name, encoder
  cfg.num_experts, cfg.expert_hidden = 2, (8,)
  cfg.bottom_hidden, cfg.tower_hidden = (8,), (4,)
  cfg.sequence_hidden, cfg.din_hidden = 5, (3,)
  return cfg


def test_config_chooses_the_encoder():
  spec = _spec("mean")
  configured = sequence.configure_spec(spec, _model_cfg("mmoe", "gru"))
  assert configured.sequences[0].encoder == "gru"
  assert configured.sequences[0].hidden == 5
  assert configured.sequences[0].din_hidden == (3,)
  no_seq = specs.DatasetSpec("toy", spec.sparse, (), spec.tasks)
  assert sequence.configure_spec(no_seq, _model_cfg("mmoe", "gru")) is no_seq
  with pytest.raises(errors.ConfigError,
                     match="Unknown sequence encoder 'lstm'; valid names: cnn, "
                           "din, gru, mean"):
    models.build_model(spec, _model_cfg("mmoe", "lstm"))
  with pytest.raises(errors.ConfigError, match="'din' needs a target"):
    models.build_model(_spec(shares=""), _model_cfg("mmoe", "din"))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_takes_a_sequence_encoder(name):
  """build_model hands the configured encoder to any architecture."""
  model = models.build_model(_spec("mean"), _model_cfg(name, "gru"))
  # Shapes only (abstract evaluation): fast, and enough to see the wiring.
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), _batch())
  paths = [jax.tree_util.keystr(p)
           for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert any("sequence_hist" in p and "cell" in p for p in paths), name
  outputs, _ = jax.eval_shape(model.apply, params, _batch())
  assert outputs["ctr"].shape == (4,)


# --- MovieLens history. -------------------------------------------------------


def test_user_histories_on_a_toy_order():
  user = np.array([1, 0, 1, 0, 1, 1])
  item = np.array([10, 20, 11, 21, 12, 13])
  order = np.array([1, 3, 0, 2, 4, 5])  # user 0: rows 1, 3; user 1: 0, 2, 4, 5
  hist = movielens.user_histories(user, item, order, 2)
  np.testing.assert_array_equal(hist, [[-1, -1], [-1, -1], [-1, 10], [-1, 20],
                                       [10, 11], [11, 12]])


@pytest.fixture(scope="module")
def ml_history(ml100k_tfds_dir):
  """(tfds_dir, splits with history_len=20) of the real data, prepared once."""
  tfds_dir = ml100k_tfds_dir
  cfg = types.SimpleNamespace(data_dir=str(ML100K), tfds_dir=str(tfds_dir),
                              max_examples=0, embed_dim=16, history_len=20)
  return tfds_dir, movielens.load(cfg)


def test_movielens_history_has_no_leakage(ml100k_dir, ml_history):
  """Each rating's history is exactly its user's previous items (by time,
  then item id, as the split orders them), whatever split they are in."""
  del ml100k_dir  # skips when the data is missing
  _, splits = ml_history
  seq = splits.spec.sequences[0]
  assert (seq.name, seq.max_len, seq.shares, seq.vocab_size) == (
      "history", 20, "item_id", 1682)
  rows = []
  for k, split in enumerate(("train", "validation", "test")):
    cols = splits.split(split)
    rows.append(np.stack([cols["user_id"], splits.extras[split]["timestamp"],
                          cols["sparse"][:, 1], np.full(len(cols["user_id"]), k),
                          np.arange(len(cols["user_id"]))], axis=1))
  rows = np.concatenate(rows)
  for user in (0, 1, 195, 404, 942):  # user 405 has 737 ratings
    mine = rows[rows[:, 0] == user]
    mine = mine[np.lexsort((mine[:, 2], mine[:, 1]))]  # time, then item
    items = list(mine[:, 2])
    for pos, (_, ts, _, split, row) in enumerate(mine):
      split_name = ("train", "validation", "test")[split]
      got = splits.split(split_name)["sequence/history"][row]
      previous = items[max(0, pos - 20):pos]
      np.testing.assert_array_equal(got, [-1] * (20 - len(previous)) + previous)
      # Only the past, and for a train rating only train ratings.
      assert (mine[:pos, 1] <= ts).all()
      assert (mine[:pos, 3] <= split).all()
  # A test rating's history reaches back into train / validation.
  test = splits.test["sequence/history"]
  assert (test[:, -1] >= 0).all()


def test_movielens_spec_has_history_only_when_asked():
  metadata = {"vocab_sizes": {f: 5 for f in movielens.SPARSE_FIELDS},
              "genres": list(movielens.GENRES), "genres_max_len": 6}
  assert movielens.make_spec(metadata, 8).sequences == ()
  assert movielens.make_spec(metadata, 8, 0).sequences == ()
  (seq,) = movielens.make_spec(metadata, 8, 3).sequences
  assert seq == specs.SequenceField("history", 5, 3, 8, shares="item_id")


@pytest.mark.parametrize("encoder", ci_subset(ENCODERS, keep=["mean", "gru"]))
def test_movielens_sequence_smoke_trains(ml100k_dir, ml_history, tmp_path,
                                         encoder):
  tfds_dir, _ = ml_history
  config = movielens_sequence.get_config("smoke")
  config.data.data_dir, config.data.tfds_dir = str(ml100k_dir), str(tfds_dir)
  config.model.sequence_encoder = encoder
  # Fast: one device, a few steps, one evaluation at the end.
  config.train.num_devices, config.train.num_steps = 1, 4
  config.train.eval_every = config.train.checkpoint_every = 0
  config.train.tensorboard, config.weighting.diagnostics_every = False, 0
  results = train.train_and_evaluate(config, str(tmp_path))
  test = results["test"]
  assert 0.0 <= test["like/auc"] <= 1.0 and np.isfinite(test["rating/rmse"])
  assert results["best_step"] > 0
