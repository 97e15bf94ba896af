"""Elastic resume: a run checkpointed on 4 devices resumes on 2 or 8 with the
same global batch. Orbax restores the state onto the new mesh's shardings
(row-sharded tables included), the input pipeline restarts at the same
global step, and the run ends with the metrics of an uninterrupted run."""
import json
import signal
import time

import jax
import numpy as np
import pytest

from mtkd_jax.train import checkpoint as checkpoint_lib
from mtkd_jax.train import mesh as mesh_lib
from tests.train import launch
from tests.train.test_multihost import assert_same_run
from tests.train.test_preemption import train_steps

STEPS = ["--config.train.num_steps=30", "--config.train.checkpoint_every=1000",
         "--config.train.eval_every=10", "--config.train.log_every=1"]


def toy_state(seed):
  """A train-state-like tree: a table (rows a multiple of 2), its Adam
  moment, dense params and a step counter."""
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(16, 4)).astype(np.float32)
  return {"params": {"sparse_table_d4": table,
                     "dense": rng.normal(size=(4, 3)).astype(np.float32)},
          "mu": {"sparse_table_d4": table * 0.5},
          "step": np.int32(7)}


@pytest.mark.parametrize("devices,spec", [(2, ""), (8, "model:2"),
                                          (2, "model:2")])
def test_checkpoint_of_4_devices_restores_onto_another_mesh(tmp_path, devices,
                                                            spec):
  saved = toy_state(0)
  old_mesh = mesh_lib.build(jax.devices()[:4], "model:2")
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.save_latest(7, mesh_lib.place_state(saved, old_mesh), {"best_step": 5})
  ckpt.close()

  new_mesh = mesh_lib.build(jax.devices()[:devices], spec)
  like = mesh_lib.place_state(toy_state(1), new_mesh)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  state, loop_state = ckpt.restore_latest(like)
  ckpt.close()

  assert loop_state == {"best_step": 5}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), saved)
  expected = mesh_lib.state_shardings(saved, new_mesh)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    assert got.sharding.is_equivalent_to(want, got.ndim)
  table = state["params"]["sparse_table_d4"]
  rows = 16 // mesh_lib.model_size(new_mesh)
  assert {s.data.shape for s in table.addressable_shards} == {(rows, 4)}
  assert len(table.sharding.device_set) == devices


def preempt_after(workdir, devices, step):
  """Runs on `devices` fake devices until `step` is logged, then SIGTERMs
  (the run saves at the next step boundary and exits 0)."""
  (proc,) = launch.launch(workdir, STEPS, devices=devices)
  deadline = time.time() + 300
  while not any(s >= step for s in train_steps(workdir)):
    assert proc.poll() is None, "the run ended before the signal"
    assert time.time() < deadline
    time.sleep(0.002)
  proc.send_signal(signal.SIGTERM)
  assert launch.wait([proc]) == [0]


@pytest.mark.slow
def test_run_on_4_devices_resumes_on_2_then_8_like_uninterrupted(tmp_path):
  straight, elastic = tmp_path / "straight", tmp_path / "elastic"
  launch.run(straight, STEPS, devices=4)
  preempt_after(elastic, devices=4, step=8)
  preempt_after(elastic, devices=2, step=18)
  launch.run(elastic, STEPS, devices=8)
  log = (tmp_path / "elastic.host0.log").read_text()
  assert log.count("Resumed from step") == 2
  assert_same_run(straight, elastic, tol=1e-6)
  train = [json.loads(line) for line in
           (elastic / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in train if r["split"] == "train"] == list(range(1, 31))
