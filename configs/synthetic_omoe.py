r"""python -m experiments.run --config configs/synthetic_omoe.py --workdir /tmp/mtkd/synthetic_omoe

OMoE (one gate shared by all tasks; the baseline of Ma et al., KDD 2018) on
the synthetic CTR/CVR data.

Smoke (seconds): --config configs/synthetic_omoe.py:smoke

As configs/synthetic_mmoe.py but with one softmax gate over the 8 experts
instead of one per task, so both towers receive the same mixture; compare
with MMoE to see what per-task gates buy.
"""
from configs import synthetic_mmoe


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.model.name = "omoe"
  return c
