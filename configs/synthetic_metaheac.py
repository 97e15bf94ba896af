r"""python -m experiments.run --config configs/synthetic_metaheac.py --workdir /tmp/mtkd/synthetic_metaheac

MetaHeac (Zhu et al., KDD 2021) on the synthetic CTR/CVR data.

Smoke (seconds): --config configs/synthetic_metaheac.py:smoke

As configs/synthetic_mmoe.py, but each task's prediction is a mixture of
shared critics over a mixture of shared experts, both weighted by attentions
over the task's learnt embedding and the input (`model.num_critics`,
`model.task_embed_dim`). Trained jointly on the tasks' losses, not by the
paper's meta-learning episodes. Any data set: --config.model.name=metaheac.
"""
from configs import synthetic_mmoe


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.model.name = "metaheac"
  c.model.num_critics = 4
  c.model.task_embed_dim = 16
  return c
