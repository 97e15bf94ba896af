"""bf16 compute with float32 master weights (train.compute_dtype)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic_mmoe
from mtkd_jax import errors
from mtkd_jax.train import trainer
from mtkd_jax.train import parallel
from mtkd_jax.train import step as step_lib


def _one_step(dtype, tmp_path):
  c = synthetic_mmoe.get_config("smoke")
  c.data.num_examples = 2000
  c.train.compute_dtype = dtype
  exp = trainer.build(c, str(tmp_path / dtype))
  state, cfg = exp.init_state, exp.step_cfg
  fn = parallel.compile_step(
      lambda s, b: step_lib.train_step(s, b, cfg=cfg), "jit", exp.mesh,
      out_batched=False, donate_state=False)
  batch = parallel.shard_batch(exp.example_batch, "jit", exp.mesh)
  new_state, metrics = fn(parallel.replicate(state, exp.mesh), batch)
  return state, jax.device_get(new_state), jax.device_get(metrics)


def test_bf16_compute_keeps_float32_master_weights(tmp_path):
  _, f32_state, f32 = _one_step("float32", tmp_path)
  before, bf16_state, bf16 = _one_step("bfloat16", tmp_path)
  for leaf in jax.tree.leaves(bf16_state.params) + jax.tree.leaves(
      bf16_state.opt_state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  # bf16 has 8 mantissa bits: the losses agree to about 1e-2 relative, and
  # the update moved the params (gradients reached the float32 copy).
  for key in ("loss/ctr", "loss/cvr"):
    np.testing.assert_allclose(bf16[key], f32[key], rtol=2e-2)
    assert bf16[key] != f32[key]  # it really ran in bf16
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
      before.params, bf16_state.params))
  assert max(moved) > 0


def test_unknown_compute_dtype_lists_the_valid_ones(tmp_path):
  with pytest.raises(errors.ConfigError, match="bfloat16"):
    _one_step("float16", tmp_path)
