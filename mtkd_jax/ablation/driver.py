"""Runs the runs of a sweep, resumably, and records each in the store.

Every run has its own workdir `<sweep dir>/<run name>`. A run is done when
its name is in `<sweep dir>/results.jsonl` or its workdir has a
`results.json` (then its store line is written now: a driver killed between
the two recovers it). Pending runs are started either

  * in this process, one after another (`parallel=1`): the config with the
    run's overrides is a locked copy, trained by `loop.train_and_evaluate`;
  * as `parallel` subprocesses `python -m experiments.run --config <base>
    --workdir <run dir> --config.<key>=<value> ...` (the command-line
    overrides of the driver first, then the run's), so overrides go through
    the same locked-config flag path as a hand-started run. Children get
    SIGKILL when the driver dies (Linux `PR_SET_PDEATHSIG`), so a killed
    driver leaves no orphan writing to a run dir; their output goes to
    `<sweep dir>/logs/<job>.log`. On a GPU or TPU machine each of the
    `parallel` slots gets its share of the accelerators (`devices.py`).

A killed run resumes from its latest checkpoint when the driver is started
again (`train_and_evaluate` on the same workdir). With `vmap_seeds`, the
pending runs of one variant (same overrides but the seed) are trained as one
`multiseed.train_and_evaluate_seeds` program (subprocess:
`python -m experiments.multiseed`); such a group has no checkpoints, so a
killed group restarts from scratch. Runs that cannot be vmapped
(`multiseed.can_vmap`: distilled students, whose teacher differs per seed)
still train one seed at a time.

One driver per sweep dir at a time (an flock on `<sweep dir>/.driver.lock`;
for a gs:// etc. sweep dir, on a file of this machine's temp dir named after
it). Every file of the sweep goes through `paths`, so a remote sweep dir
writes nothing locally except the subprocesses' logs while they run (in the
temp dir; copied to `<sweep dir>/logs/` when each ends).
"""
import collections
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ml_collections

from mtkd_jax import errors
from mtkd_jax import paths
from mtkd_jax import sweeps
from mtkd_jax.ablation import devices
from mtkd_jax.ablation import store

REPO = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Job:
  """One run, or (vmap) the pending seeds of one variant."""
  runs: List[sweeps.Run]
  vmap: bool = False

  @property
  def name(self) -> str:
    if self.vmap:
      return f"{self.runs[0].variant}__vmap_seeds=" + "-".join(
          str(r.seed) for r in self.runs)
    return self.runs[0].name


@dataclasses.dataclass
class Summary:
  finished: List[str] = dataclasses.field(default_factory=list)
  skipped: List[str] = dataclasses.field(default_factory=list)
  recovered: List[str] = dataclasses.field(default_factory=list)
  failed: Dict[str, str] = dataclasses.field(default_factory=dict)


def run_dir(sweep_dir: str, run: sweeps.Run) -> str:
  return os.path.join(sweep_dir, run.name)


def make_jobs(runs: Sequence[sweeps.Run], vmap_seeds: bool,
              one_seed_only: Sequence[str] = ()) -> List[Job]:
  """Single-run jobs, or with `vmap_seeds` one job per variant's seeds
  (except the runs named in `one_seed_only`, e.g. distilled students, whose
  teachers differ per seed: one job each)."""
  if not vmap_seeds:
    return [Job([r]) for r in runs]
  groups = collections.OrderedDict()
  for run in runs:
    if run.seed is None or run.name in one_seed_only:
      groups[("single", run.name)] = [run]
      continue
    key = (run.variant, json.dumps(sweeps.jsonable(
        run.overrides_without_seed()), sort_keys=True))
    groups.setdefault(key, []).append(run)
  return [Job(g, vmap=len(g) > 1) for g in groups.values()]


def _lock_file(sweep_dir: str) -> str:
  """The local file the driver flocks for `sweep_dir`."""
  if paths.is_local(sweep_dir):
    return os.path.join(sweep_dir, ".driver.lock")
  digest = hashlib.sha256(str(sweep_dir).encode()).hexdigest()[:16]
  return os.path.join(tempfile.gettempdir(), f"mtkd_sweep_{digest}.lock")


def _lock(sweep_dir: str):
  f = open(_lock_file(sweep_dir), "w")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.close()
    raise errors.ConfigError(f"Another ablation driver is running on "
                             f"{sweep_dir}; wait for it or stop it.") from None
  return f


def _die_with_parent(parent_pid: int):
  def set_pdeathsig():
    try:
      import ctypes  # pylint: disable=g-import-not-at-top
      libc = ctypes.CDLL("libc.so.6", use_errno=True)
      libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      return
    if os.getppid() != parent_pid:  # the parent died before prctl
      os._exit(1)  # pylint: disable=protected-access
  return set_pdeathsig


def _read_results(workdir: str) -> Optional[dict]:
  path = paths.path(workdir) / "results.json"
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    return None


class _Recorder:
  """Appends store lines and keeps the progress bar and summary."""

  def __init__(self, sweep_dir, seeds_by_name, summary, progress):
    self.sweep_dir, self.seeds, self.summary = sweep_dir, seeds_by_name, summary
    self.progress = progress

  def finished(self, run, results, wall, mode, *, recovered=False):
    store.append(self.sweep_dir, store.make_record(
        run, results, sweep_dir=self.sweep_dir,
        workdir=run_dir(self.sweep_dir, run), seed=self.seeds[run.name],
        wall_time_s=wall, mode=mode))
    (self.summary.recovered if recovered else self.summary.finished).append(
        run.name)
    if not recovered:
      self._advance(f"done {run.name} ({wall:.1f} s)")

  def failed(self, run, message):
    self.summary.failed[run.name] = message
    self._advance(f"FAILED {run.name}: {message}")

  def _advance(self, line):
    if self.progress is not None:
      self.progress.update(1)
      self.progress.write(line)
    else:
      print(line, flush=True)


def run_sweep(config: ml_collections.ConfigDict, runs: Sequence[sweeps.Run],
              sweep_dir: str, *, parallel: int = 1, vmap_seeds: bool = False,
              config_path: Optional[str] = None,
              global_overrides: Optional[Mapping[str, Any]] = None,
              show_progress: bool = True) -> Summary:
  """Runs every pending run of `runs` under `sweep_dir`; see the module doc.

  Args:
    config: the base config, with the command-line overrides applied.
    runs: the sweep (sweeps.load_sweep / make_runs).
    sweep_dir: the sweep's directory.
    parallel: 1 runs in this process; N > 1 runs N subprocesses at a time.
    vmap_seeds: train the seeds of each variant as one vmapped program.
    config_path: the base config file (`path[:arg]`); needed when
      parallel > 1.
    global_overrides: the command-line overrides (dotted key -> value),
      passed to every subprocess before the run's own.
    show_progress: a tqdm bar over the whole sweep.
  Returns:
    What was finished, skipped (done before), recovered and failed.
  """
  if parallel > 1 and not config_path:
    raise ValueError("parallel > 1 needs config_path (the base config file).")
  sweeps.validate(config, runs)  # every key and name, before any run starts
  paths.path(sweep_dir).mkdir(parents=True, exist_ok=True)
  lock = _lock(sweep_dir)
  try:
    return _run_locked(config, runs, sweep_dir, parallel, vmap_seeds,
                       config_path, dict(global_overrides or {}),
                       show_progress)
  finally:
    lock.close()


def _run_locked(config, runs, sweep_dir, parallel, vmap_seeds, config_path,
                global_overrides, show_progress) -> Summary:
  configs = {r.name: sweeps.apply_overrides(config, r.overrides) for r in runs}
  (paths.path(sweep_dir) / "sweep.json").write_text(json.dumps(
      {"config": config_path, "global_overrides": sweeps.jsonable(
          global_overrides), "runs": [
              {"name": r.name, "variant": r.variant, "index": r.index,
               "overrides": sweeps.jsonable(r.overrides)} for r in runs]},
      indent=1))
  summary = Summary()
  seeds = {name: int(c.seed) for name, c in configs.items()}
  done = store.names(sweep_dir)
  recorder = _Recorder(sweep_dir, seeds, summary, None)
  pending = []
  for run in runs:
    if run.name in done:
      summary.skipped.append(run.name)
      continue
    results = _read_results(run_dir(sweep_dir, run))
    if results is not None:  # finished, but its line was never written
      recorder.finished(run, results, None, "recovered", recovered=True)
      continue
    pending.append(run)
  progress = None
  if show_progress and pending:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    progress = tqdm.tqdm(total=len(runs), initial=len(runs) - len(pending),
                         desc="sweep", unit="run", dynamic_ncols=True)
  recorder.progress = progress
  one_seed_only = ()
  if vmap_seeds:
    from mtkd_jax.train import multiseed  # pylint: disable=g-import-not-at-top
    one_seed_only = {r.name for r in pending
                     if not multiseed.can_vmap(configs[r.name])}
  jobs = make_jobs(pending, vmap_seeds, one_seed_only)
  try:
    if parallel <= 1:
      for job in jobs:
        _run_in_process(job, config, configs, sweep_dir, recorder)
    else:
      _run_subprocesses(jobs, parallel, sweep_dir, config_path,
                        global_overrides, recorder)
  finally:
    if progress is not None:
      progress.close()
  return summary


# ----------------------------------------------------------- in process


def _run_in_process(job, config, configs, sweep_dir, recorder):
  from mtkd_jax.train import loop  # pylint: disable=g-import-not-at-top
  from mtkd_jax.train import multiseed  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  try:
    if job.vmap:
      group_config = sweeps.apply_overrides(
          config, job.runs[0].overrides_without_seed())
      all_results = multiseed.train_and_evaluate_seeds(
          group_config, sweep_dir, [r.seed for r in job.runs],
          seed_workdirs=[run_dir(sweep_dir, r) for r in job.runs])
    else:
      run = job.runs[0]
      all_results = [loop.train_and_evaluate(configs[run.name],
                                             run_dir(sweep_dir, run))]
  except Exception as e:  # pylint: disable=broad-except
    # One bad run must not stop the sweep (as with subprocesses); a bug's
    # traceback goes to the job's log.
    message = f"{type(e).__name__}: {e}".splitlines()[0][:500]
    if not isinstance(e, errors.UserFacingError):
      log_dir = paths.path(sweep_dir) / "logs"
      log_dir.mkdir(parents=True, exist_ok=True)
      log_path = log_dir / (job.name + ".log")
      paths.append_text(log_path, traceback.format_exc())
      message += f" (traceback: {log_path})"
    for run in job.runs:
      recorder.failed(run, message)
    return
  wall = (time.perf_counter() - t0) / len(job.runs)
  for run, results in zip(job.runs, all_results):
    recorder.finished(run, results, wall, "vmap" if job.vmap else "run")


# ---------------------------------------------------------- subprocesses


def job_command(job: Job, sweep_dir: str, config_path: str,
                global_overrides: Mapping[str, Any]) -> List[str]:
  """The command line of a job (experiments.run or experiments.multiseed)."""
  own = (job.runs[0].overrides_without_seed() if job.vmap
         else job.runs[0].overrides)
  shared = {k: v for k, v in global_overrides.items() if k not in own}
  if job.vmap:
    shared.pop(sweeps.SEED, None)
    head = [sys.executable, "-m", "experiments.multiseed",
            f"--config={config_path}", f"--workdir={sweep_dir}",
            "--seeds=" + ",".join(str(r.seed) for r in job.runs)]
    head += [f"--seed_workdir={run_dir(sweep_dir, r)}" for r in job.runs]
  else:
    head = [sys.executable, "-m", "experiments.run", f"--config={config_path}",
            f"--workdir={run_dir(sweep_dir, job.runs[0])}"]
  return head + sweeps.cli_overrides(shared) + sweeps.cli_overrides(own)


def _env(extra: Mapping[str, str] = ()):
  env = dict(os.environ, **dict(extra))
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                     if p])
  return env


def _last_error_line(log_path: str) -> str:
  try:
    with open(log_path, errors="replace") as f:
      lines = [l.strip() for l in f.read().splitlines()[-50:] if l.strip()]
  except OSError:
    return "no log"
  for line in reversed(lines):
    if line.startswith("error:") or "Error" in line:
      return line[:500]
  return lines[-1][:500] if lines else "no output"


def _run_subprocesses(jobs, parallel, sweep_dir, config_path,
                      global_overrides, recorder):
  log_dir = paths.path(sweep_dir) / "logs"
  log_dir.mkdir(parents=True, exist_ok=True)
  # A child writes its output to a local file; a remote sweep's logs are
  # copied to <sweep dir>/logs when each child ends.
  local = paths.is_local(sweep_dir)
  local_dir = str(log_dir) if local else tempfile.mkdtemp(prefix="mtkd_logs_")
  platform, ids = devices.probe()  # before any run holds an accelerator
  print(devices.describe(platform, ids, parallel), flush=True)
  slot_envs = [devices.slot_env(platform, ids, s, parallel)
               for s in range(parallel)]
  free_slots = list(range(parallel))
  queue = collections.deque(jobs)
  running = []  # (job, Popen, log file, start time, slot)

  def keep(log) -> str:
    """Closes a child's log; returns where it is kept."""
    log.close()
    if local:
      return log.name
    kept = log_dir / os.path.basename(log.name)
    with open(log.name, errors="replace") as f:
      paths.append_text(kept, f.read())
    os.remove(log.name)
    return str(kept)

  try:
    while queue or running:
      while queue and len(running) < parallel:
        job = queue.popleft()
        log = open(os.path.join(local_dir, job.name + ".log"), "a")
        cmd = job_command(job, sweep_dir, config_path, global_overrides)
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        slot = free_slots.pop(0)
        proc = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
            cmd, cwd=os.getcwd(), env=_env(slot_envs[slot]), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(os.getpid()))
        running.append((job, proc, log, time.perf_counter(), slot))
      time.sleep(0.2)
      still = []
      for job, proc, log, t0, slot in running:
        rc = proc.poll()
        if rc is None:
          still.append((job, proc, log, t0, slot))
          continue
        free_slots = sorted(free_slots + [slot])
        log.close()
        error = _last_error_line(log.name)
        kept = keep(log)
        wall = (time.perf_counter() - t0) / len(job.runs)
        for run in job.runs:
          results = _read_results(run_dir(sweep_dir, run))
          if rc == 0 and results is not None:
            recorder.finished(run, results, wall, "vmap" if job.vmap else "run")
          else:
            recorder.failed(run, f"exit {rc}: {error} (log: {kept})")
      running = still
  finally:
    for _, proc, log, _, _ in running:  # interrupted: stop what we started
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      keep(log)
    if not local:
      shutil.rmtree(local_dir, ignore_errors=True)
