"""Behaviour-sequence encoders: a user's history of ids -> one vector.

`FeatureEmbedding` embeds each `spec.sequences` field (with the table of the
sparse field it `shares`, so history item k and target item k are the same
row), then calls the field's encoder:

  encoder(emb float[B, L, d], mask bool[B, L], target float[B, d] | None)
      -> float[B, out]

`FeatureEmbedding` passes zeros where `mask` is False, but no encoder relies
on it. Every encoder ignores padding wherever it sits: extra -1 columns, or
other values under the padding, never change its output. The data puts padding on the LEFT (most recent item
last); the GRU and Caser encoders first move the real items, in order, to
the right or left end themselves, so they also accept any other placement.

Encoders (`SEQUENCE_ENCODERS`, chosen by `--config.model.sequence_encoder`):
  mean: masked mean of the history embeddings (zeros when empty); out = d.
  gru:  a GRU (Cho et al. 2014; as in GRU4Rec, Hidasi et al. ICLR 2016) over
        the real items in time order; the output is the hidden state after
        the last real item (zeros when empty); out = hidden.
  cnn:  Caser (Tang & Wang, WSDM 2018, Sec. 3.2): horizontal convolutions of
        heights 1..3 (`hidden` filters each, ReLU, max-pooled over the
        windows lying wholly inside the real items) and `CASER_VERTICAL`
        vertical filters (weighted sums over the L positions, aligned so the
        most recent item is the last position), concatenated and mapped by
        a ReLU dense layer; out = hidden.
  din:  Deep Interest Network target attention (Zhou et al., KDD 2018,
        Sec. 4.3, Fig. 2): an activation unit MLP on
        [e_i, e_t, e_i - e_t, e_i * e_t] gives each history item i a weight
        w_i (no softmax, as in the paper; 0 for padding) and the output is
        sum_i w_i e_i; e_t is the target, the embedding of the current
        example's id in the shared sparse field; out = d.

`configure_spec(spec, model_cfg)` copies the encoder choice and its widths
from the model config into the spec's sequence fields (as `embed_dim` comes
from the data config); `models.build_model` calls it, so every model that
builds `FeatureEmbedding(self.spec)` honours the config.
"""
import dataclasses
from typing import Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mtkd_jax import errors
from mtkd_jax import registry
from mtkd_jax.data import specs as specs_lib

CASER_HEIGHTS = (1, 2, 3)  # horizontal filter heights (clipped to L)
CASER_VERTICAL = 4  # vertical filters, n_v in the paper


def _compact(x: jnp.ndarray, mask: jnp.ndarray, real_first: bool):
  """Moves the real steps of each row, in order, to one end.

  Args:
    x: float[B, L, d].
    mask: bool[B, L], True for real steps.
    real_first: True -> real steps at [0, n) (right padding); False -> at
      [L - n, L) (left padding).

  Returns:
    (x float[B, L, d], mask bool[B, L]) permuted per row.
  """
  key = jnp.logical_not(mask) if real_first else mask
  order = jnp.argsort(key, axis=1, stable=True)  # [B, L]
  return (jnp.take_along_axis(x, order[..., None], axis=1),
          jnp.take_along_axis(mask, order, axis=1))


class MeanPooling(nn.Module):
  """Masked mean: sum_i m_i e_i / max(sum_i m_i, 1) -> float[B, d]."""

  @nn.compact
  def __call__(self, emb, mask, target=None):
    m = mask.astype(emb.dtype)[..., None]
    return (emb * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


class GRUEncoder(nn.Module):
  """The GRU state after the last real item -> float[B, hidden].

  nn.RNN(nn.GRUCell) runs over the real items moved to the front (right
  padding), with `seq_lengths` = the number of real items; flax then returns
  the carry at step n - 1. Rows without history get zeros (the initial
  state), not the state after n = 0 steps, which flax would read at index -1.
  """
  hidden: int = 32

  @nn.compact
  def __call__(self, emb, mask, target=None):
    x, _ = _compact(emb, mask, real_first=True)
    lengths = mask.sum(axis=1).astype(jnp.int32)  # [B]
    carry, _ = nn.RNN(nn.GRUCell(self.hidden, name="cell"), return_carry=True,
                      name="rnn")(x, seq_lengths=lengths)
    return jnp.where(lengths[:, None] > 0, carry, 0.0)


class CaserEncoder(nn.Module):
  """Caser's convolutional sequence embedding -> float[B, hidden].

  With E = the L x d history matrix (left-aligned so position L - 1 is the
  most recent item; padding rows are zeros):
    horizontal, height h: c_t = relu(sum_{j<h, k<d} F_{jk} E_{t+j, k} + b),
      o_h = max over windows t inside the real items (0 if none), for
      `hidden` filters F per height in CASER_HEIGHTS (those <= L);
    vertical: o'_v = sum_l W_{lv} E_l, in R^d, for CASER_VERTICAL filters
      (no bias, so padding rows contribute exactly 0);
    z = relu(Dense_hidden([o; o'])).
  Departures from the paper: heights 1..3 with `hidden` filters each (the
  paper spreads n filters over heights 1..L), no dropout, and z is not
  concatenated with a user embedding here (the user id, if any, is already
  a sparse field of the embedding layer's output).
  """
  hidden: int = 32
  heights: Sequence[int] = CASER_HEIGHTS
  num_vertical: int = CASER_VERTICAL

  @nn.compact
  def __call__(self, emb, mask, target=None):
    x, m = _compact(emb, mask, real_first=False)
    x = x * m[..., None].astype(x.dtype)  # padding rows are exactly zero
    batch, length, dim = x.shape
    first_real = length - m.sum(axis=1).astype(jnp.int32)  # [B]
    pooled = []
    for h in self.heights:
      if h > length:
        continue
      c = nn.relu(nn.Conv(self.hidden, (h,), padding="VALID",
                          name=f"horizontal_h{h}")(x))  # [B, L - h + 1, hidden]
      start = jnp.arange(length - h + 1)
      inside = start[None, :] >= first_real[:, None]  # [B, L - h + 1]
      best = jnp.max(jnp.where(inside[..., None], c, -jnp.inf), axis=1)
      pooled.append(jnp.where(inside.any(axis=1, keepdims=True), best, 0.0))
    w = self.param("vertical", nn.initializers.lecun_normal(),
                   (length, self.num_vertical), jnp.float32)
    vertical = jnp.einsum("bld,lv->bvd", x, w).reshape(batch, -1)
    z = jnp.concatenate(pooled + [vertical], axis=-1)
    return nn.relu(nn.Dense(self.hidden, name="fc")(z))


class DINAttention(nn.Module):
  """DIN's local activation unit and weighted sum pooling -> float[B, d].

  a_i = MLP([e_i, e_t, e_i - e_t, e_i * e_t]) (PReLU hidden layers of widths
  `din_hidden`, then a linear output), w_i = a_i if item i is real else 0,
  output = sum_i w_i e_i. No softmax: the paper keeps the intensity of the
  user's interest in the scale of the sum.
  """
  din_hidden: Sequence[int] = (36,)

  def __call__(self, emb, mask, target=None):
    weights = self.attention_weights(emb, mask, target)  # [B, L]
    return jnp.einsum("bl,bld->bd", weights, emb)

  @nn.compact
  def attention_weights(self, emb, mask, target):
    """w float[B, L]: the activation unit's output, 0 for padding."""
    if target is None:
      raise errors.ConfigError(
          "The din sequence encoder needs a target: give the sequence field "
          "`shares=<sparse field>` (e.g. 'item_id').")
    t = jnp.broadcast_to(target[:, None, :], emb.shape)
    h = jnp.concatenate([emb, t, emb - t, emb * t], axis=-1)  # [B, L, 4d]
    for i, width in enumerate(self.din_hidden):
      h = nn.Dense(width, name=f"dense_{i}")(h)
      h = nn.PReLU(name=f"prelu_{i}")(h)
    a = nn.Dense(1, name="out")(h)[..., 0]
    return jnp.where(mask, a, 0.0)


def _mean(field: specs_lib.SequenceField, name: str) -> nn.Module:
  del field
  return MeanPooling(name=name)


def _gru(field, name):
  return GRUEncoder(hidden=field.hidden, name=name)


def _cnn(field, name):
  return CaserEncoder(hidden=field.hidden, name=name)


def _din(field, name):
  return DINAttention(din_hidden=tuple(field.din_hidden), name=name)


SEQUENCE_ENCODERS: Dict[str, Callable[..., nn.Module]] = {
    "mean": _mean,
    "gru": _gru,
    "cnn": _cnn,
    "din": _din,
}


def make_encoder(field: specs_lib.SequenceField,
                 name: Optional[str] = None) -> nn.Module:
  """The encoder module `field.encoder` with the field's widths."""
  return registry.lookup(SEQUENCE_ENCODERS, field.encoder,
                         "sequence encoder")(field, name)


def configure_spec(spec: specs_lib.DatasetSpec,
                   model_cfg) -> specs_lib.DatasetSpec:
  """`spec` with every sequence field's encoder taken from `model_cfg`.

  Reads `sequence_encoder`, `sequence_hidden`, `din_hidden` (each optional;
  the field's value stays when the config lacks it). A spec without
  sequences is returned as it is.

  Raises:
    ConfigError: for an unknown encoder, or din on a field without `shares`.
  """
  if not spec.sequences:
    return spec
  fields = []
  for field in spec.sequences:
    field = dataclasses.replace(
        field,
        encoder=str(getattr(model_cfg, "sequence_encoder", field.encoder)),
        hidden=int(getattr(model_cfg, "sequence_hidden", field.hidden)),
        din_hidden=tuple(int(w) for w in getattr(model_cfg, "din_hidden",
                                                 field.din_hidden)))
    registry.lookup(SEQUENCE_ENCODERS, field.encoder, "sequence encoder")
    if field.encoder == "din" and not field.shares:
      raise errors.ConfigError(
          f"sequence_encoder 'din' needs a target, but sequence field "
          f"{field.name!r} shares no sparse field's table.")
    fields.append(field)
  return dataclasses.replace(spec, sequences=tuple(fields))
