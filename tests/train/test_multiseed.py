"""The vmap-over-seeds mode gives, per seed, the metrics of that seed alone.

Tolerance: the vmapped step runs the same float32 math, but vmap turns each
matmul into a batched matmul that XLA may tile (and so sum) differently;
measured differences are ~1e-7 relative after 24 Adam steps, so rtol=1e-5
leaves two orders of magnitude and still catches any real mismatch (a wrong
seed, data order or eval point changes the metrics at the 1e-2 level).
"""
import json

import numpy as np

from configs import mmoe_synthetic
from mtkd_jax.train import loop
from mtkd_jax.train import multiseed
from mtkd_jax.train import writers

SEEDS = (0, 1, 2)


def small_config():
  config = mmoe_synthetic.get_config("smoke")
  config.train.num_steps = 24
  config.train.eval_every = 8
  config.train.log_every = 4
  config.train.checkpoint_every = 0  # only at the end (faster)
  config.train.num_devices = 2  # the psum inside the vmap crosses devices
  config.train.patience = 2
  config.train.tensorboard = False
  return config


def test_vmapped_seeds_match_single_runs(tmp_path):
  config = small_config()
  vmapped = multiseed.train_and_evaluate_seeds(config, str(tmp_path / "vmap"),
                                               SEEDS)
  assert len(vmapped) == len(SEEDS)
  for seed, got in zip(SEEDS, vmapped):
    config.seed = seed
    want = loop.train_and_evaluate(config, str(tmp_path / f"single_{seed}"))
    assert got["best_step"] == want["best_step"]
    assert got["steps"] == want["steps"]
    for split in ("validation", "test"):
      assert set(got[split]) == set(want[split])
      for key, value in want[split].items():
        np.testing.assert_allclose(got[split][key], value, rtol=1e-5,
                                   atol=1e-7, err_msg=f"seed {seed} {split} {key}")
    # Same files, same format, same logged history (to float rounding).
    seed_dir = tmp_path / "vmap" / f"seed_{seed}"
    on_disk = json.loads((seed_dir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(got))
    assert json.loads((seed_dir / "config.json").read_text())["seed"] == seed
    a = writers.read_metrics(str(seed_dir))
    b = writers.read_metrics(str(tmp_path / f"single_{seed}"))
    assert [(r["step"], r["split"]) for r in a] == [
        (r["step"], r["split"]) for r in b]
    for ra, rb in zip(a, b):
      if ra["split"] == "train":
        np.testing.assert_allclose(ra["loss"], rb["loss"], rtol=1e-5)
  # The seeds really differ (different init and data order).
  assert vmapped[0]["test"]["y1/rmse"] != vmapped[1]["test"]["y1/rmse"]
