r"""python -m experiments.run --config configs/synthetic_esmm.py --workdir /tmp/mtkd/synthetic_esmm

ESMM (Ma et al., SIGIR 2018) on the synthetic click -> conversion funnel.

Smoke (seconds): --config configs/synthetic_esmm.py:smoke

The synthetic data with `data.ctcvr`: tasks ctr (click) and ctcvr (click
and convert), both over all impressions. pCTCVR = pCTR * pCVR, so the CVR
tower is trained over the entire space through ctcvr, never on clicked rows
alone. Towers are bottom_hidden + tower_hidden = [256, 128, 64].
"""
import ml_collections

from configs import synthetic_mmoe
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.data.ctcvr = True
  c.tasks = ml_collections.ConfigDict()
  config_defaults.set_tasks(c, ctr=("bce", 1.0), ctcvr=("bce", 1.0))
  c.model.name = "esmm"
  c.model.funnel_tasks = ("ctr", "ctcvr")
  return c
