r"""python -m experiments.run --config configs/movielens_kd.py --config.data.data_dir=/path/to/ml-100k --config.distill.teacher_workdirs="('/tmp/mtkd/ablations/movielens_kd/teacher__seed=0',)" --workdir /tmp/mtkd/movielens_kd_student

Distillation on MovieLens-100K: a large MMoE teacher, a small MMoE student.

One command trains, for each of 3 seeds, the teacher, the student without
distillation and the student distilled from that seed's teacher, then the
report sets them side by side (test metrics of the checkpoint chosen on
validation, parameters, FLOPs and latency):

  python -m experiments.ablation --config configs/movielens_kd.py --config.data.data_dir=/path/to/ml-100k --sweep configs/sweeps/distillation.py:configs/movielens_kd.py --workdir /tmp/mtkd/ablations/movielens_kd
  python -m experiments.report /tmp/mtkd/ablations/movielens_kd --baseline student --gap_closed teacher,student,student_kd --metrics like/auc,like/gauc,like/logloss,like/ece,rating/rmse,model/non_embedding_params,model/flops_per_example,model/latency_ms_per_batch

Smoke (seconds): `:teacher_smoke`, `:student_smoke`, `:smoke`.
Configs: `:teacher` the teacher; `:student` the student alone; no argument
the distilled student, whose teacher is `distill.teacher_workdirs`
("{parent}/teacher__seed={seed}": the sweep's teacher of the same seed; set
it to any finished run's workdir to distil from that run).
The student has 1/8 or less of the teacher's non-embedding parameters; both
share the embedding width. Distillation: soft targets at temperature T for
`like` (Bernoulli KL x T^2) and prediction matching for `rating`, mixed with
the hard labels by alpha.
"""
from configs import movielens_mmoe
from mtkd_jax import config_defaults


def get_config(arg=None):
  return config_defaults.distillation_variant(
      movielens_mmoe.get_config, arg,
      teacher_model=dict(num_experts=8, expert_hidden=(256, 128),
                         tower_hidden=(64,), dropout=0.1),
      student_model=dict(num_experts=2, expert_hidden=(32, 16),
                         tower_hidden=(16,), dropout=0.1),
      temperature=1.0, alpha=0.5)
