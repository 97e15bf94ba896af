"""The results store of a sweep: `<sweep dir>/results.jsonl`.

One JSON line per finished run, appended when it finishes:
  {"name", "variant", "index", "overrides", "seed", "validation", "test",
   "best_step", "steps", "select_metric", "wall_time_s", "workdir",
   "mode", "finished_at"}
`workdir` is relative to the sweep dir. `read` keeps the last line of each
run name (a run recorded twice, e.g. after a crash between writing its
results.json and its line, counts once).
"""
import datetime
import json
import os
from typing import Dict, List, Optional

from etils import epath

from mtkd_jax import paths

FILENAME = "results.jsonl"


def path(sweep_dir: str) -> epath.Path:
  return paths.path(sweep_dir) / FILENAME


def read(sweep_dir: str) -> List[dict]:
  """The records of `sweep_dir`, one per run name (the last), in file order."""
  p = path(sweep_dir)
  if not p.exists():
    return []
  records: Dict[str, dict] = {}
  for line in p.read_text().splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill mid-write
      continue
    records.pop(record["name"], None)
    records[record["name"]] = record
  return list(records.values())


def names(sweep_dir: str) -> set:
  return {r["name"] for r in read(sweep_dir)}


def make_record(run, results: dict, *, sweep_dir: str, workdir: str,
                seed: int, wall_time_s: Optional[float], mode: str) -> dict:
  """The store line of `run` (a sweeps.Run) from its results.json dict."""
  from mtkd_jax import sweeps  # pylint: disable=g-import-not-at-top
  return {
      "name": run.name,
      "variant": run.variant,
      "index": run.index,
      "overrides": sweeps.jsonable(run.overrides),
      "seed": int(seed),
      "validation": results["validation"],
      "test": results["test"],
      "best_step": results.get("best_step"),
      "steps": results.get("steps"),
      "select_metric": results.get("select_metric"),
      "model": results.get("model"),  # parameters, FLOPs, latency
      "wall_time_s": None if wall_time_s is None else round(wall_time_s, 3),
      "workdir": os.path.relpath(workdir, sweep_dir),
      "mode": mode,
      "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
  }


def append(sweep_dir: str, record: dict) -> None:
  """Appends one line (a single write, flushed and fsynced)."""
  paths.append_text(path(sweep_dir), json.dumps(record, sort_keys=False) + "\n")
