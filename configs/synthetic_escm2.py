r"""python -m experiments.run --config configs/synthetic_escm2.py --workdir /tmp/mtkd/synthetic_escm2

ESCM2 (Wang et al., SIGIR 2022) on the synthetic click -> conversion funnel.

Smoke (seconds): --config configs/synthetic_escm2.py:smoke
The IPS variant: --config.model.counterfactual=ips (default: dr).

As configs/synthetic_esmm.py (tasks ctr and ctcvr over all impressions,
pCTCVR = pCTR * pCVR), plus ESCM2's counterfactual CVR risk with weight
`model.counterfactual_weight`: the DR error term and the imputation tower's
risk (loss terms escm2/dr and escm2/imputation), or the IPS risk escm2/ips.
Other funnels: configs/movielens_esmm.py and configs/aliccp_mmoe.py with
--config.model.name=escm2 (and model.funnel_tasks=like,love on MovieLens).
"""
from configs import synthetic_esmm


def get_config(arg=None):
  c = synthetic_esmm.get_config(arg)
  c.model.name = "escm2"
  c.model.counterfactual = "dr"
  c.model.counterfactual_weight = 0.5
  return c
