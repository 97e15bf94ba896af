r"""Configs of the benchmark workload's model shapes (docs/benchmarks.md).

  python -m benchmarks.train_throughput --models mmoe,ple,shared_bottom

`get_config("mmoe")` is the default experiment config with the workload's
shapes: MMoE with 8 experts / Shared-Bottom with a bottom of [256, 128],
towers [64], PLE with one CGC level of 4 shared + 2 task-specific experts,
no dropout; one epoch of batches of 1024, evaluation batches of 4096, model
seed 0, `train.accel="auto"` (the CPU speed work on a CPU, as the published
figures were measured). `get_config("mmoe,tiny")` shrinks the model (2 experts of [16],
towers [8]) for smoke checks. Benchmarks read these instead of setting
shapes by hand, and override only what they vary (--weighting, ...).
"""
import ml_collections

from mtkd_jax import config_defaults

MODEL_SHAPES = dict(num_experts=8, expert_hidden=(256, 128),
                    bottom_hidden=(256, 128), tower_hidden=(64,), num_levels=1,
                    num_shared_experts=4, num_specific_experts=2, dropout=0.0)
TINY_SHAPES = dict(num_experts=2, expert_hidden=(16,), tower_hidden=(8,))
TRAIN = dict(batch_size=1024, num_epochs=1, num_steps=0, tensorboard=False,
             accel="auto")
EVAL_BATCH_SIZE = 4096
MODEL_SEED = 0


def get_config(arg: str = "mmoe") -> ml_collections.ConfigDict:
  """The workload's config for model `arg` ("<model>[,tiny]")."""
  name, *flags = [a.strip() for a in arg.split(",")]
  unknown = set(flags) - {"tiny"}
  if unknown:
    raise ValueError(f"Unknown preset flag(s) {sorted(unknown)}; valid: tiny.")
  config = config_defaults.default_config()
  config.model.name = name
  shapes = {**MODEL_SHAPES, **(TINY_SHAPES if "tiny" in flags else {})}
  for key, value in shapes.items():
    config.model[key] = value
  for key, value in TRAIN.items():
    config.train[key] = value
  config.eval.batch_size = EVAL_BATCH_SIZE
  config.seed = MODEL_SEED
  return config


def build_trainer(config, spec, train, test=None):
  """`trainer.build(config)` over the workload's columns (`train`, and
  `test` as both the validation and test splits; default `train`)."""
  # pylint: disable=g-import-not-at-top
  from mtkd_jax.data import specs
  from mtkd_jax.train import trainer as trainer_lib
  # pylint: enable=g-import-not-at-top
  test = train if test is None else test
  return trainer_lib.build(config, splits=specs.Splits(spec, train, test, test))
