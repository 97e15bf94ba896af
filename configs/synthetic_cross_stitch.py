r"""python -m experiments.run --config configs/synthetic_cross_stitch.py --workdir /tmp/mtkd/synthetic_cross_stitch

Cross-stitch networks (Misra et al., CVPR 2016) on the synthetic CTR/CVR
data.

Smoke (seconds): --config configs/synthetic_cross_stitch.py:smoke

One [256, 128] column per task over the shared embedding, a learned 2 x 2
cross-stitch unit after each column layer (initialised at the paper's 0.9
self / 0.1 other; `--config.model.alpha_init=identity` starts from
independent columns), then towers [64].
"""
from configs import synthetic_mmoe


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.model.name = "cross_stitch"
  c.model.alpha_init = "balanced"
  return c
