r"""python -m experiments.run --config configs/synthetic_aitm.py --workdir /tmp/mtkd/synthetic_aitm

AITM (Xi et al., KDD 2021) on the synthetic click -> conversion funnel.

Smoke (seconds): --config configs/synthetic_aitm.py:smoke

The synthetic data with `data.ctcvr`: tasks ctr then ctcvr (click, click and
convert), in funnel order. The ctcvr tower attends over its own
representation and the information transferred from the click task; the
behavioural expectation calibrator (weight alpha = 0.6) penalises
p(ctcvr) > p(ctr) and is logged as the loss term aitm/calibration.
"""
import ml_collections

from configs import synthetic_mmoe
from mtkd_jax import config_defaults


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.data.ctcvr = True
  c.tasks = ml_collections.ConfigDict()
  config_defaults.set_tasks(c, ctr=("bce", 1.0), ctcvr=("bce", 1.0))
  c.model.name = "aitm"
  c.model.calibration_weight = 0.6
  return c
