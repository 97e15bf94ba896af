r"""python -m experiments.run --config configs/synthetic_dselect_k.py --workdir /tmp/mtkd/synthetic_dselect_k

MMoE with DSelect-k gates (Hazimeh et al., NeurIPS 2021) on the synthetic
CTR/CVR data.

Smoke (seconds): --config configs/synthetic_dselect_k.py:smoke

8 experts; each task's gate selects at most k = 2 of them through k binary-
coded single-expert selectors (smooth-step width gamma = 1). Add the
paper's entropy regulariser with `--config.model.entropy_reg=1e-3`.
The smoke run keeps 3 experts (not a power of 2), which exercises the
reachability loss term.
"""
from configs import synthetic_mmoe


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.model.name = "dselect_k"
  c.model.num_selectors = 2
  c.model.gamma = 1.0
  return c
