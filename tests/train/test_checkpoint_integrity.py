"""Damaged checkpoints are detected (checksums) and skipped for the newest
one that verifies and restores, for the latest and the best checkpoints."""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic_mmoe
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.train import checkpoint as checkpoint_lib
from mtkd_jax.train import checkpoint_integrity as integrity


def _state(value):
  return {"params": {"w": jnp.full((4, 3), value, jnp.float32)},
          "step": jnp.int32(value)}


def _saved(workdir, steps=(1, 2)):
  ckpt = checkpoint_lib.Checkpointer(str(workdir))
  for s in steps:
    ckpt.save_latest(s, _state(s), {"at": s})
  return ckpt


def _data_file(step_dir):
  """The largest array data file of a step (Orbax's OCDBT layout)."""
  return max((step_dir / "state").glob("ocdbt.process_*/d/*"),
             key=lambda p: p.stat().st_size)


def _flip_byte(step_dir):
  path = _data_file(step_dir)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


def _truncate(step_dir):
  path = _data_file(step_dir)
  path.write_bytes(path.read_bytes()[:10])


def _delete_data(step_dir):
  _data_file(step_dir).unlink()


def _delete_state_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def _delete_loop_metadata(step_dir):
  (step_dir / "loop" / "metadata").unlink()


def _copied_without_data(step_dir):
  """The step dir as `cp` of its top-level files only (no manifest either)."""
  for p in list(step_dir.iterdir()):
    if p.is_dir():
      shutil.rmtree(p)
    elif p.name == integrity.MANIFEST_FILE:
      p.unlink()


@pytest.mark.parametrize("damage", [
    _flip_byte, _truncate, _delete_data, _delete_state_metadata,
    _delete_loop_metadata, _copied_without_data])
def test_damaged_latest_falls_back_to_previous(tmp_path, damage, caplog):
  _saved(tmp_path).close()
  damage(tmp_path / "checkpoints" / "2")
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  state, loop = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert int(state["step"]) == 1 and loop == {"at": 1}
  np.testing.assert_array_equal(state["params"]["w"], np.ones((4, 3)))
  warnings = [r.getMessage() for r in caplog.records
              if "damaged latest checkpoint step 2" in r.getMessage()]
  assert len(warnings) == 1, caplog.text
  assert (tmp_path / "damaged" / "latest-2").is_dir()  # kept, not deleted
  assert not (tmp_path / "checkpoints" / "2").exists()


def test_flipped_byte_is_named_by_the_checksum(tmp_path):
  _saved(tmp_path, steps=(1,)).close()
  step_dir = tmp_path / "checkpoints" / "1"
  assert integrity.verify(step_dir) is None
  _flip_byte(step_dir)
  assert "fails its sha256 checksum" in integrity.verify(step_dir)


def test_no_restorable_checkpoint_is_one_error(tmp_path):
  _saved(tmp_path, steps=(1,)).close()
  _truncate(tmp_path / "checkpoints" / "1")
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  with pytest.raises(errors.CheckpointError,
                     match=r"no latest checkpoint .* restores \(step 1: "):
    ckpt.restore_latest(_state(0))
  ckpt.close()


def _config(steps):
  config = synthetic_mmoe.get_config("smoke")
  config.train.num_steps = steps
  config.train.tensorboard = False
  return config


def _without_latency(results):
  results["model"].pop("latency_ms_per_batch", None)
  return results


def test_run_resumes_past_a_damaged_latest(tmp_path):
  """Checkpoints at 10 and 20: flip a byte of 20, and the rerun resumes
  from 10, retrains to 20 and ends exactly like the first run."""
  workdir = tmp_path / "run"
  first = _without_latency(train.train_and_evaluate(_config(20), str(workdir)))
  (workdir / "results.json").unlink()
  _flip_byte(workdir / "checkpoints" / "20")
  again = _without_latency(train.train_and_evaluate(_config(20), str(workdir)))
  assert (workdir / "damaged" / "latest-20").is_dir()
  assert again == first


def test_damaged_best_falls_back_at_the_final_restore(tmp_path):
  """A truncated file in the newest best checkpoint: the final restore
  tests the previous best instead of crashing (every rerun, before)."""
  workdir = tmp_path / "run"
  train.train_and_evaluate(_config(20), str(workdir))
  assert sorted(int(p.name) for p in (workdir / "best").iterdir()) == [10, 20]
  _truncate(workdir / "best" / "20")
  (workdir / "results.json").unlink()
  results = train.train_and_evaluate(_config(20), str(workdir))  # no steps
  assert results["best_step"] == 10
  assert json.loads((workdir / "results.json").read_text())["best_step"] == 10
  assert (workdir / "damaged" / "best-20").is_dir()
