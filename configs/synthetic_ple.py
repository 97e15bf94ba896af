r"""python -m experiments.run --config configs/synthetic_ple.py --workdir /tmp/mtkd/synthetic_ple

PLE / CGC (Tang et al., RecSys 2020) on the synthetic CTR/CVR data.

Smoke (seconds): --config configs/synthetic_ple.py:smoke

One CGC level with 4 shared and 2 task-specific experts per task, experts
[256, 128], towers [64] (as the benchmark workload, docs/benchmarks.md). Stack levels with
`--config.model.num_levels=2` (PLE proper: a shared gate feeds the next
level's shared experts).
"""
from configs import synthetic_mmoe


def get_config(arg=None):
  c = synthetic_mmoe.get_config(arg)
  c.model.name = "ple"
  c.model.num_levels = 1
  c.model.num_shared_experts = 4
  c.model.num_specific_experts = 2
  c.model.expert_hidden = (256, 128)
  if arg == "smoke":
    c.model.num_shared_experts = 2
    c.model.num_specific_experts = 1
    c.model.expert_hidden = (32, 16)
  return c
