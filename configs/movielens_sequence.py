r"""python -m experiments.run --config configs/movielens_sequence.py --config.data.data_dir=/path/to/ml-100k --workdir /tmp/mtkd/movielens_sequence

MMoE with a behaviour-sequence input on MovieLens-100K: rating (regression) +
like (rating >= 4, binary), as configs/movielens_mmoe.py, plus each rating's
history: the user's previous `data.history_len` items in time order (never a
later one), embedded with item_id's table and encoded by
`model.sequence_encoder`:

  --config.model.sequence_encoder=din   DIN target attention (default)
  --config.model.sequence_encoder=mean  masked mean pooling
  --config.model.sequence_encoder=gru   GRU final state
  --config.model.sequence_encoder=cnn   Caser convolutions

Any model takes any encoder: --config.model.name=shared_bottom etc.

Smoke (seconds): --config configs/movielens_sequence.py:smoke

Splits are per user and in time order (oldest 80% train, next 10%
validation, newest 10% test); the checkpoint with the best validation
like-AUC is tested once. Reports test RMSE (rating) and AUC / GAUC / logloss
(like).
"""
from configs import movielens_mmoe


def get_config(arg=None):
  c = movielens_mmoe.get_config(arg)  # same data, model and schedule
  c.data.history_len = 20  # L previous items per rating; 0 = none
  c.model.sequence_encoder = "din"
  c.model.sequence_hidden = 32
  c.model.din_hidden = (36,)
  if arg == "smoke":
    c.model.sequence_hidden = 8
    c.model.din_hidden = (8,)
  return c
