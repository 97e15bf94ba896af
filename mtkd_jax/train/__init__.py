"""Training: state, steps, parallelism, checkpoints and the loop."""
from mtkd_jax.train.loop import train_and_evaluate
