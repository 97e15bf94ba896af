"""Sweeps and the ablation driver: helpers, run names, fail-fast overrides,
kill-and-restart, parallel subprocesses with tuple overrides, vmapped seeds."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import mmoe_synthetic
from mtkd_jax import errors
from mtkd_jax import sweeps
from mtkd_jax.ablation import driver
from mtkd_jax.ablation import store
from tests.conftest import REPO

SMOKE = "configs/mmoe_synthetic.py:smoke"
FAST = ["--config.train.tensorboard=False", "--config.train.log_every=5"]


def env():
  e = dict(os.environ)
  e.pop("XLA_FLAGS", None)
  e["JAX_PLATFORMS"] = "cpu"
  return e


def write_sweep(tmp_path, body, name="sweep.py"):
  path = tmp_path / name
  path.write_text("from mtkd_jax import sweeps\n\n\ndef get_sweep(arg=None):\n"
                  f"  return {body}\n")
  return str(path)


def ablation_cmd(sweep, workdir, *extra):
  return [sys.executable, "-m", "experiments.ablation", f"--config={SMOKE}",
          f"--sweep={sweep}", f"--workdir={workdir}", *FAST, *extra]


def store_lines(workdir):
  path = os.path.join(workdir, "results.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


# ------------------------------------------------------------ helpers


def test_product_zip_chain_named_seeds():
  grid = sweeps.product(**{"model.name": ["a", "b"]}, seed=[0, 1])
  assert grid == [{"model.name": "a", "seed": 0}, {"model.name": "a", "seed": 1},
                  {"model.name": "b", "seed": 0}, {"model.name": "b", "seed": 1}]
  assert sweeps.zip_(**{"x.a": [1, 2], "x.b": [3, 4]}) == [
      {"x.a": 1, "x.b": 3}, {"x.a": 2, "x.b": 4}]
  with pytest.raises(ValueError, match="equal length"):
    sweeps.zip_(a=[1], b=[1, 2])
  with pytest.raises(ValueError, match="set twice"):
    sweeps.product({"seed": 1}, seed=[2])
  sweep = sweeps.chain(
      sweeps.product(sweeps.named("baseline", {"model.name": "mmoe"}),
                     sweeps.seeds(2)),
      sweeps.product(**{"model.name": ["shared_bottom"],
                        "weighting.name": ["ew"],
                        "model.expert_hidden": [(16, 8)]}),
      sweeps.named("base"))
  runs = sweeps.make_runs(sweep)
  assert [r.name for r in runs] == [
      "baseline__seed=0", "baseline__seed=1",
      "model.name=shared_bottom__weighting.name=ew__expert_hidden=16-8",
      "base"]
  assert [r.variant for r in runs[:2]] == ["baseline", "baseline"]
  assert runs[0].overrides == {"model.name": "mmoe", "seed": 0}
  assert runs[3].overrides == {} and runs[3].seed is None
  with pytest.raises(errors.ConfigError, match="run name 'x=1'"):
    sweeps.make_runs([{"x": 1}, {"x": 1}])


def test_unknown_key_or_bad_value_names_the_run():
  config = mmoe_synthetic.get_config("smoke")
  config.lock()
  runs = sweeps.make_runs(sweeps.product(
      **{"model.name": ["mmoe"], "model.expert_hiden": [(16, 8)]}))
  with pytest.raises(errors.ConfigError, match=r"run 'name=mmoe__expert_hiden="
                     r"16-8'.*Unknown config key 'model.expert_hiden'.*"
                     r"Did you mean 'model.expert_hidden'"):
    sweeps.validate(config, runs)
  with pytest.raises(errors.ConfigError, match="Bad value 'x'.*batch_size"):
    sweeps.validate(config, sweeps.make_runs([{"train.batch_size": "x"}]))
  with pytest.raises(errors.ConfigError, match="Unknown model 'mmeo'"):
    sweeps.validate(config, sweeps.make_runs([{"model.name": "mmeo"}]))
  ok = sweeps.apply_overrides(config, {"model.expert_hidden": [16, 8],
                                       "data.correlation": 1})
  assert ok.model.expert_hidden == (16, 8) and ok.data.correlation == 1.0
  assert config.model.expert_hidden == (16,)  # the base is untouched


def test_shipped_sweeps_load_and_fail_on_a_missing_model(monkeypatch):
  from mtkd_jax import models
  runs = sweeps.load_sweep("configs/sweeps/mmoe_synthetic.py")
  # 4 models x 3 correlations x 6 seeds.
  assert len(runs) == 72 and runs[0].name == (
      "correlation=0.5__name=shared_bottom__seed=0")
  assert {r.overrides["model.name"] for r in runs} == {
      "shared_bottom", "omoe", "mmoe", "single_task"}
  config = mmoe_synthetic.get_config()
  config.lock()
  sweeps.validate(config, runs)
  census = sweeps.load_sweep("configs/sweeps/census_weighting.py:ew")
  assert [r.name for r in census][:3] == [
      "model.name=mmoe__weighting.name=ew__seed=0",
      "model.name=mmoe__weighting.name=ew__seed=1",
      "model.name=mmoe__weighting.name=ew__seed=2"]
  monkeypatch.setattr(models, "MODELS",
                      {k: v for k, v in models.MODELS.items() if k != "omoe"})
  with pytest.raises(errors.ConfigError, match="needs model.s. omoe"):
    sweeps.load_sweep("configs/sweeps/mmoe_synthetic.py")


def test_cli_fails_fast_before_any_run(tmp_path):
  sweep = write_sweep(tmp_path, 'sweeps.product(**{"model.name": ["mmoe", '
                      '"shared_bottom"], "train.batch_sise": [64]})')
  out = subprocess.run(ablation_cmd(sweep, tmp_path / "w"), cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Sweep run 'name=mmoe__batch_sise=64': "
                         "Unknown config key 'train.batch_sise'"), last
  assert not (tmp_path / "w").exists()


# ------------------------------------------------------- driver: resume


def processes_mentioning(text):
  """PIDs whose command line contains `text` (Linux /proc)."""
  pids = []
  for pid in os.listdir("/proc"):
    if not pid.isdigit():
      continue
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        if text.encode() in f.read():
          pids.append(int(pid))
    except OSError:
      continue
  return pids


@pytest.mark.slow  # minutes of CI; MTKD_RUN_SLOW=1 runs it
def test_killed_driver_restarts_without_redoing_finished_runs(tmp_path):
  """SIGKILL the driver (2 parallel subprocesses) after its first result
  line, start it again: every run is recorded exactly once, the first is not
  re-run, the children died with the driver, and tuple overrides (global and
  per run) reach every run's config."""
  sweep = write_sweep(tmp_path, 'sweeps.chain(sweeps.seeds(2), '
                      '[{"model.tower_hidden": (8, 4), "seed": 0}])')
  workdir = tmp_path / "w"
  cmd = ablation_cmd(sweep, workdir, "--parallel=2",
                     "--config.train.num_steps=40",
                     "--config.train.checkpoint_every=10",
                     "--config.train.eval_every=20",
                     "--config.model.expert_hidden=(16, 8)")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not store_lines(workdir):
    assert proc.poll() is None, "driver ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  first = store_lines(workdir)
  assert len(first) < 3, "the whole sweep finished before the kill"
  first_name = first[0]["name"]
  mtime = os.stat(workdir / first_name / "results.json").st_mtime_ns
  for _ in range(50):  # PR_SET_PDEATHSIG: the children go with the driver
    if not processes_mentioning(str(workdir)):
      break
    time.sleep(0.1)
  assert not processes_mentioning(str(workdir))

  out = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = store_lines(workdir)
  names = ["base__seed=0", "base__seed=1", "tower_hidden=8-4__seed=0"]
  assert sorted(l["name"] for l in lines) == names  # each exactly once
  assert os.stat(workdir / first_name / "results.json").st_mtime_ns == mtime
  assert "already done" in out.stdout
  for line in lines:
    # "recovered": its child had written results.json when the driver died.
    assert line["steps"] == 40 and line["mode"] in ("run", "recovered")
    assert set(line["test"]) >= {"y1/rmse", "y2/rmse", "mean/rmse"}
    config = json.loads((workdir / line["name"] / "config.json").read_text())
    assert config["model"]["expert_hidden"] == [16, 8]
    assert config["model"]["tower_hidden"] == (
        [8, 4] if line["name"].startswith("tower") else [8])
    assert config["seed"] == line["seed"]
  assert sorted(os.listdir(workdir / "logs")) == [n + ".log" for n in names]


def test_job_command_puts_run_overrides_after_global_ones():
  runs = sweeps.make_runs(sweeps.product(**{"model.name": ["omoe"]},
                                         seed=[0, 1]))
  jobs = driver.make_jobs(runs, vmap_seeds=True)
  assert len(jobs) == 1 and jobs[0].vmap
  cmd = driver.job_command(jobs[0], "/s", "c.py:smoke",
                           {"model.name": "mmoe", "seed": 5,
                            "model.expert_hidden": (16, 8)})
  assert cmd[1:] == [
      "-m", "experiments.multiseed", "--config=c.py:smoke", "--workdir=/s",
      "--seeds=0,1", "--seed_workdir=/s/name=omoe__seed=0",
      "--seed_workdir=/s/name=omoe__seed=1",
      "--config.model.expert_hidden=(16, 8)", "--config.model.name=omoe"]
  assert [len(j.runs) for j in driver.make_jobs(runs, vmap_seeds=False)] == [1, 1]


def test_in_process_sweep_with_vmapped_seeds(tmp_path):
  config = mmoe_synthetic.get_config("smoke")
  config.train.num_steps = 6
  config.train.eval_every = 3
  config.train.tensorboard = False
  config.lock()
  runs = sweeps.make_runs(sweeps.chain(
      sweeps.product(**{"model.name": ["shared_bottom"]}, seed=[0, 1]),
      [{"model.name": "mmoe", "seed": 0}]))  # a group of one: a plain run
  summary = driver.run_sweep(config, runs, str(tmp_path), vmap_seeds=True,
                             show_progress=False)
  assert summary.finished == [r.name for r in runs] and not summary.failed
  records = store.read(str(tmp_path))
  assert [r["mode"] for r in records] == ["vmap", "vmap", "run"]
  for record in records:
    results = json.loads((tmp_path / record["name"] / "results.json").read_text())
    assert results["test"] == record["test"] and results["steps"] == 6
    config_json = json.loads((tmp_path / record["name"] / "config.json").read_text())
    assert config_json["seed"] == record["seed"]
  # Done runs are skipped on a second call; a lost store line is recovered.
  lines = (tmp_path / "results.jsonl").read_text().splitlines()
  (tmp_path / "results.jsonl").write_text("\n".join(lines[:2]) + "\n")
  again = driver.run_sweep(config, runs, str(tmp_path), vmap_seeds=True,
                           show_progress=False)
  assert again.skipped == [r.name for r in runs[:2]] and not again.finished
  assert again.recovered == [runs[2].name]
  assert [r["name"] for r in store.read(str(tmp_path))] == [r.name for r in runs]


def test_weighting_and_architecture_sweeps_cover_the_registries():
  from configs import census_mmoe  # pylint: disable=g-import-not-at-top
  from mtkd_jax import models, weighting  # pylint: disable=g-import-not-at-top
  runs = sweeps.load_sweep("configs/ablations/weighting.py")
  assert {r.overrides["weighting.name"] for r in runs} == set(weighting.METHODS)
  assert len(runs) == len(sweeps.DEFAULT_SEEDS) * len(weighting.METHODS)
  archs = sweeps.load_sweep("configs/sweeps/architectures.py")
  names = {r.overrides["model.name"] for r in archs}
  assert names <= set(models.MODELS) and {"single_task", "mmoe", "ple"} <= names
  config = census_mmoe.get_config()
  config.lock()
  sweeps.validate(config, runs)
  sweeps.validate(config, archs)
  with pytest.raises(errors.ConfigError, match="Unknown weighting method"):
    sweeps.load_sweep("configs/ablations/weighting.py:pcgrd")


def test_make_jobs_keeps_one_seed_only_runs_single():
  runs = sweeps.make_runs(sweeps.product(
      sweeps.chain(sweeps.named("teacher", {"model.num_experts": 4}),
                   sweeps.named("student_kd", {})), sweeps.seeds(2)))
  jobs = driver.make_jobs(runs, vmap_seeds=True,
                          one_seed_only={"student_kd__seed=0",
                                         "student_kd__seed=1"})
  assert [(len(j.runs), j.vmap) for j in jobs] == [(2, True), (1, False),
                                                    (1, False)]


def test_split_seeds_option():
  assert sweeps.split_seeds_option(None) == (None, sweeps.DEFAULT_SEEDS)
  assert sweeps.split_seeds_option("mmoe,ple") == ("mmoe,ple",
                                                   sweeps.DEFAULT_SEEDS)
  assert sweeps.split_seeds_option("mmoe,ple:seeds=6") == ("mmoe,ple",
                                                           tuple(range(6)))
  assert sweeps.split_seeds_option("seeds=2") == (None, (0, 1))
  assert sweeps.split_seeds_option("a.py:seeds=3:smoke") == ("a.py:smoke",
                                                             (0, 1, 2))
  for bad in ("seeds=0", "seeds=x", "seeds=2:seeds=3"):
    with pytest.raises(errors.ConfigError, match="seeds=N"):
      sweeps.split_seeds_option(bad)


def test_sweep_files_take_a_seeds_option():
  arch = sweeps.load_sweep(
      f"{REPO}/configs/sweeps/architectures.py:mmoe,ple:seeds=6")
  assert [r.name for r in arch][-1] == "name=ple__seed=5" and len(arch) == 12
  kd = sweeps.load_sweep(f"{REPO}/configs/sweeps/distillation.py:"
                         f"{REPO}/configs/movielens_kd.py:seeds=2")
  assert [r.name for r in kd] == [
      f"{v}__seed={s}" for v in ("teacher", "student", "student_kd")
      for s in (0, 1)]


def test_distillation_sweep_sizes_widen_the_student():
  runs = {r.name: r for r in sweeps.load_sweep(
      f"{REPO}/configs/sweeps/distillation.py:"
      f"{REPO}/configs/census_kd.py:settings:sizes:seeds=1")}
  assert list(runs)[-4:] == ["student_w4__seed=0", "student_w4_kd__seed=0",
                             "student_w16__seed=0", "student_w16_kd__seed=0"]
  assert "kd_calibrated__seed=0" in runs
  student = runs["student__seed=0"].overrides
  assert student["model.expert_hidden"] == (8,)  # configs/census_kd.py
  for m in (4, 16):
    alone = runs[f"student_w{m}__seed=0"].overrides
    distilled = runs[f"student_w{m}_kd__seed=0"].overrides
    assert alone["model.expert_hidden"] == (8 * m,)
    assert alone["model.tower_hidden"] == (4 * m,)
    assert alone["model.num_experts"] == student["model.num_experts"] == 2
    assert alone["distill.teacher_workdirs"] == ()  # trained alone
    assert "distill.teacher_workdirs" not in distilled  # the config's teacher
    assert distilled["model.expert_hidden"] == (8 * m,)
  with pytest.raises(errors.ConfigError, match="valid: smoke"):
    sweeps.load_sweep(f"{REPO}/configs/sweeps/distillation.py:"
                      f"{REPO}/configs/census_kd.py:size")
