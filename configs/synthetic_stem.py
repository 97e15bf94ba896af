r"""python -m experiments.run --config configs/synthetic_stem.py --workdir /tmp/mtkd/synthetic_stem

STEM (Su et al., AAAI 2024) on the synthetic CTR/CVR data.

Smoke (seconds): --config configs/synthetic_stem.py:smoke

As configs/synthetic_mmoe.py, but every task also has its own embedding
tables and specific experts; a task's gate mixes every expert, and another
task's specific experts enter it without gradient (all forward, task-
specific backward). Any data set: --config.model.name=stem.
"""
from configs import synthetic_mmoe


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.model.name = "stem"
  c.model.num_shared_experts = 1
  c.model.num_specific_experts = 1
  return c
