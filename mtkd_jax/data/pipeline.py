"""Host input pipeline over in-memory numpy columns.

Decoding happens once, in the dataset builder; here a batch is a slice of
the columns by a per-epoch permutation. The order is a pure function of
(seed, epoch), so a resumed run reads exactly the batches an uninterrupted
run would: the position in the data is derived from the global step.

Every batch has the full global batch size: the last batch of an epoch (and
of an eval split) is padded with zero-weight rows, so shapes never change and
nothing recompiles. Each host reads only its own rows of each global batch.
"""
import collections
import itertools
from typing import Callable, Iterator

import jax
import numpy as np

from mtkd_jax.data.columns import num_rows


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of rows for `epoch`; the same on every host."""
  rng = np.random.default_rng([seed, epoch])
  return rng.permutation(num_examples)


def host_slice(global_size: int, process=None) -> slice:
  """This host's contiguous share of a global batch.

  Args:
    process: (index, count) of the process; default: this one's.
  """
  index, count = process or (jax.process_index(), jax.process_count())
  per_host = global_size // count
  return slice(index * per_host, (index + 1) * per_host)


def train_batches(columns: dict, global_batch_size: int, *, seed: int,
                  start_step: int = 0, shuffle: bool = True,
                  process=None) -> Iterator[dict]:
  """Endless host batches from global step `start_step` on.

  Step s reads batch `s % steps_per_epoch` of epoch `s // steps_per_epoch`;
  `process`: see `host_slice`.
  """
  n = num_rows(columns)
  per_epoch = steps_per_epoch(n, global_batch_size)
  mine = host_slice(global_batch_size, process)
  order, order_epoch = None, None
  for step in itertools.count(start_step):
    epoch, index = divmod(step, per_epoch)
    if epoch != order_epoch:  # one permutation per epoch, not per batch
      order = epoch_order(n, seed, epoch) if shuffle else np.arange(n)
      order_epoch = epoch
    rows = order[index * global_batch_size:(index + 1) * global_batch_size]
    rows = np.concatenate([rows, np.full(global_batch_size - len(rows), -1)])
    yield _host_batch(columns, rows[mine])


def eval_batches(columns: dict, global_batch_size: int) -> Iterator[dict]:
  """One pass over all rows in order, the last batch padded (weight 0)."""
  n = num_rows(columns)
  mine = host_slice(global_batch_size)
  for start in range(0, n, global_batch_size):
    rows = np.arange(start, min(start + global_batch_size, n))
    rows = np.concatenate([rows, np.full(global_batch_size - len(rows), -1)])
    yield _host_batch(columns, rows[mine])


def _host_batch(columns: dict, rows: np.ndarray) -> dict:
  """Rows of this host's share; -1 marks padding (weight 0, row 0's values)."""
  real = rows >= 0
  batch = {k: v[np.where(real, rows, 0)] for k, v in columns.items()}
  if not real.all():
    batch["weights"] = np.where(real, batch["weights"], 0).astype(np.float32)
  return batch


def prefetch(batches: Iterator[dict], put: Callable[[dict], dict],
             size: int = 2) -> Iterator[dict]:
  """Keeps `size` batches already transferred (`put` is asynchronous)."""
  queue = collections.deque()
  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
