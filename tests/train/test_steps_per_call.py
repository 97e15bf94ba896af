"""`train.steps_per_call`: k updates in one compiled call (`lax.scan` of the
train step) give the run of one update per call, with every event at the
same step.

Tolerance: the scanned program runs the same float32 operations on the same
values in the same order; on the CPU backend every value here came out
bit-identical (checked with rtol=0). XLA compiles the scanned body inside a
while loop, where another backend may fuse (and so round) differently from
the standalone step, so the comparisons allow rtol=1e-6: a wrong batch
order, a skipped or repeated update or a wrong PRNG step changes these
values at the 1e-3 level or more.
"""
import json

import jax
import numpy as np
import pytest

from configs import synthetic_mmoe
from mtkd_jax import config_checks
from mtkd_jax import errors
from mtkd_jax import train
from mtkd_jax.train import loop
from mtkd_jax.train import mesh as mesh_lib
from mtkd_jax.train import preemption
from mtkd_jax.train import trainer as trainer_lib
from mtkd_jax.train import writers

RTOL = 1e-6
K = 4


def small_config(k, **train_overrides):
  """The smoke config, 14 steps; with k = 4 its calls are 4,1,1,4,1,1,1,1
  (log every 5, evaluation and checkpoint every 10, gradient diagnostics
  before updates 6 and 12): k-calls and single steps."""
  config = synthetic_mmoe.get_config("smoke")
  config.train.update({**dict(num_steps=14, log_every=5, eval_every=10,
                             checkpoint_every=10, tensorboard=False,
                             steps_per_call=k), **train_overrides})
  config.weighting.diagnostics_every = 6
  return config


def assert_trees_close(got, want):
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=RTOL,
                               atol=1e-7, err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------- the calls


@pytest.mark.parametrize("k,log,eval_every,ckpt,diag,total", [
    (4, 5, 10, 10, 0, 14), (4, 4, 8, 8, 0, 38), (8, 50, 0, 500, 500, 1000),
    (3, 7, 0, 0, 6, 40), (5, 1, 0, 0, 0, 9)])
def test_every_event_step_ends_a_call(k, log, eval_every, ckpt, diag, total):
  tcfg = small_config(k, log_every=log, eval_every=eval_every,
                      checkpoint_every=ckpt).train
  sizes = list(loop.call_sizes(0, total, tcfg, diag))
  ends = set(np.cumsum(sizes).tolist())
  assert sum(sizes) == total and set(sizes) <= {1, k}
  events = {s for s in range(1, total + 1)
            if loop.step_events(s, total, tcfg)[3]}
  assert events <= ends
  starts = np.cumsum([0] + sizes[:-1])  # no k-call updates a diagnostics step
  for start, size in zip(starts, sizes):
    if size > 1 and diag:
      assert all(u % diag for u in range(start + 1, start + size + 1))
  # From any call boundary (a resumed run) the same calls follow.
  for start in list(starts)[::3]:
    assert list(loop.call_sizes(int(start), total, tcfg, diag)) == sizes[
        list(starts).index(start):]


def test_smoke_calls_mix_k_calls_and_single_steps():
  assert list(loop.call_sizes(0, 14, small_config(K).train, 0)) == [
      4, 1, 4, 1, 4]
  assert list(loop.call_sizes(0, 14, small_config(K).train, 6)) == [
      4, 1, 1, 4, 1, 1, 1, 1]
  assert list(loop.call_sizes(0, 16, small_config(
      K, log_every=4, eval_every=8, checkpoint_every=8).train, 0)) == [4] * 4
  assert list(loop.call_sizes(0, 6, small_config(1).train, 3)) == [1] * 6


# --------------------------------------------------- the compiled k-call


@pytest.mark.parametrize("num_devices,mesh", [(1, ""), (8, ""),
                                              (8, "data:4,model:2")])
def test_scan_step_equals_k_single_steps(num_devices, mesh):
  config = small_config(K, num_devices=num_devices, mesh=mesh)
  trainer = trainer_lib.build(config)
  host = trainer.train_batches(0, prefetch=False)
  batches = [next(host) for _ in range(K)]
  state = mesh_lib.place_state(trainer.init_state, trainer.mesh)
  singles = []
  for batch in batches:
    state, metrics = trainer.train_step(state, trainer.put(batch))
    singles.append(metrics)
  scanned, stacked = trainer.scan_step(
      mesh_lib.place_state(trainer.init_state, trainer.mesh),
      trainer.put(trainer_lib.stack_batches(batches)))
  assert int(scanned.step) == K
  assert_trees_close(jax.device_get(scanned), jax.device_get(state))
  per_step = loop.per_step_metrics([(K, jax.device_get(stacked))])
  assert len(per_step) == K
  for got, want in zip(per_step, jax.device_get(singles)):
    assert set(got) == set(want)
    assert_trees_close(got, want)


# ------------------------------------------------------------ whole runs


def train_records(workdir):
  return [r for r in writers.read_metrics(str(workdir)) if r["split"] == "train"]


def eval_records(workdir):
  return [r for r in writers.read_metrics(str(workdir))
          if r["split"] in ("validation", "test")]


def assert_records_close(got, want, skip=("examples_per_sec",
                                          "steps_per_sec")):
  assert [(r["step"], r["split"]) for r in got] == [
      (r["step"], r["split"]) for r in want]
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for key in set(w) - set(skip) - {"step", "split", "time"}:
      if isinstance(w[key], float):
        np.testing.assert_allclose(g[key], w[key], rtol=RTOL, atol=1e-7,
                                   err_msg=f"step {w['step']} {key}")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """The 14-step run with one update per call (8 devices, 1-D mesh)."""
  workdir = tmp_path_factory.mktemp("k1")
  return workdir, train.train_and_evaluate(small_config(1), str(workdir))


def test_k_calls_give_the_same_run_on_eight_devices(tmp_path, reference_run):
  ref_dir, ref = reference_run
  assert jax.device_count() == 8  # the smoke config's data mesh: all 8
  got = train.train_and_evaluate(small_config(K), str(tmp_path))
  assert got["steps"] == ref["steps"] == 14
  assert got["best_step"] == ref["best_step"]
  records = train_records(tmp_path)
  assert [r["step"] for r in records] == [5, 10, 14]
  assert "grad_cos/ctr/cvr" in records[1] and "grad_cos/ctr/cvr" in records[2]
  assert_records_close(train_records(tmp_path), train_records(ref_dir))
  assert_records_close(eval_records(tmp_path), eval_records(ref_dir))
  assert_trees_close(got["test"], ref["test"])


class PreemptAt(preemption.Watcher):
  """A watcher that reports a signal at update `STEP` only."""
  STEP = 2

  def requested(self, step):
    return step == self.STEP


def test_preempted_k_run_saves_at_the_call_end_and_resumes(
    tmp_path, reference_run, monkeypatch):
  ref_dir, ref = reference_run
  with monkeypatch.context() as m:
    m.setattr(preemption, "Watcher", PreemptAt)
    with pytest.raises(preemption.Preempted) as stop:
      train.train_and_evaluate(small_config(K), str(tmp_path))
  assert stop.value.step == 4  # update 2 is inside the call 0 -> 4
  got = train.train_and_evaluate(small_config(K), str(tmp_path))
  assert got["steps"] == 14 and got["best_step"] == ref["best_step"]
  # The log at step 5 averages steps 5 only (the buffer of 1-4 was lost
  # with the process, as with k = 1); the later ones are whole.
  assert [r["step"] for r in train_records(tmp_path)] == [5, 10, 14]
  assert_records_close(train_records(tmp_path)[1:], train_records(ref_dir)[1:])
  assert_records_close(eval_records(tmp_path), eval_records(ref_dir))
  assert_trees_close(got["test"], ref["test"])
  assert json.loads((tmp_path / "results.json").read_text())["steps"] == 14


# ----------------------------------------------------------- config errors


def test_steps_per_call_below_one_is_refused():
  with pytest.raises(errors.ConfigError, match="train.steps_per_call"):
    config_checks.check_config(small_config(0))


def test_pmap_and_vmapped_seeds_are_refused():
  with pytest.raises(errors.ConfigError,
                     match=r"train.steps_per_call=4 needs train.parallel='jit'"):
    trainer_lib.build(small_config(K, parallel="pmap"))
  with pytest.raises(errors.ConfigError,
                     match="train.steps_per_call=4 is for single-seed runs"):
    trainer_lib.build(small_config(K), seeds=(0, 1))
