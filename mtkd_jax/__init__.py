"""mtkd_jax: multi-task learning and knowledge distillation for recommendation."""
__version__ = "0.1.0"
