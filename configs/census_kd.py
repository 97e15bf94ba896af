r"""python -m experiments.run --config configs/census_kd.py --config.data.data_dir=/path/to/census-income-kdd --config.distill.teacher_workdirs="('/tmp/mtkd/ablations/census_kd/teacher__seed=0',)" --workdir /tmp/mtkd/census_kd_student

Distillation on Census-Income (KDD): a large MMoE teacher, a small student.

  python -m experiments.ablation --config configs/census_kd.py --config.data.data_dir=/path/to/census-income-kdd --sweep configs/sweeps/distillation.py:configs/census_kd.py --workdir /tmp/mtkd/ablations/census_kd
  python -m experiments.report /tmp/mtkd/ablations/census_kd --baseline student --gap_closed teacher,student,student_kd --metrics income/auc,marital/auc,mean/auc,income/ece,marital/ece,model/non_embedding_params,model/flops_per_example,model/latency_ms_per_batch

Tasks income (> 50K) and marital (never married), as in the MMoE paper.
Smoke (seconds): `:teacher_smoke`, `:student_smoke`, `:smoke`.
Configs: `:teacher` (8 experts of 128-64 units), `:student` (2 experts of 8
units: under 1/8 of the teacher's non-embedding parameters) and, with no
argument, the student distilled from "{parent}/teacher__seed={seed}" with
Bernoulli soft targets (T^2-scaled KL) on both tasks.
This student (1/65 of the teacher) is too small to gain from distillation;
4x its widths (`--config.model.expert_hidden="(32,)"
--config.model.tower_hidden="(16,)"`, 1/18 of the teacher) closes 55% of
its gap to the teacher (docs/reproductions.md; the sweep's `:sizes`).
"""
from configs import census_mmoe
from mtkd_jax import config_defaults


def get_config(arg=None):
  return config_defaults.distillation_variant(
      census_mmoe.get_config, arg,
      teacher_model=dict(num_experts=8, expert_hidden=(128, 64),
                         tower_hidden=(32,)),
      student_model=dict(num_experts=2, expert_hidden=(8,), tower_hidden=(4,)),
      temperature=1.0, alpha=0.5)
