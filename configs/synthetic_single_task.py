r"""python -m experiments.run --config configs/synthetic_single_task.py --workdir /tmp/mtkd/synthetic_single_task

Independent single-task models (nothing shared) on the synthetic CTR/CVR
data: the baseline every multi-task model should beat.

Smoke (seconds): --config configs/synthetic_single_task.py:smoke

Each task has its own embedding tables, bottom [256, 128] and tower [64];
trained jointly for convenience, but no parameter receives gradient from
more than one task.
"""
from configs import synthetic_mmoe


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.model.name = "single_task"
  return c
