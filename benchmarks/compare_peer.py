r"""Our models next to the peer's (torch-rechub), measured in one run.

  python -m benchmarks.compare_peer --out /tmp/compare_peer.jsonl
  python -m benchmarks.compare_peer --quick --out /tmp/smoke.jsonl  # smoke
  python -m benchmarks.compare_peer --markdown /tmp/compare_peer.jsonl \
      --doc docs/benchmarks.md     # the page's tables from those lines

For each pair (mmoe / rechub_mmoe, ple / rechub_ple, shared_bottom /
rechub_sharedbottom) it runs, in sequence and in this one session, the
peer's `../shared/bench/peer_bench.py` under the peer's own Python
(`--peer-python`, else $PEER_PYTHON, else $PEER_VENV/bin/python, else
../peer_venv/bin/python; see ../shared/bench/PEER.md for the install) and
our `benchmarks/train_throughput.py` under this Python, on the same data
file, with the same warm-up / steps / repeats / idle-wait settings. Each
side keeps its own clean-repeat logic: before every timed repeat it waits
(within `--idle-wait` s per model) until other processes use < 5% of the
machine's CPU (/proc/stat minus /proc/self/stat), and reports the median of
the clean repeats. This parent process only sleeps in `wait()` while a side
runs, so it does not count as load.

Rounds: each pair runs `--rounds` times (3 in a full run), the two sides
alternating (peer, ours, ours, peer, peer, ours for mmoe), each round in
fresh processes. A side's figure is the median over rounds of its per-round
medians; the ratio is the ratio of those. Why: this 2-core VM has slow
states of seconds to minutes in which one process's step runs ~10% slower
for the same work (docs/benchmarks.md, "Method"), so one process per side
could put one side in a slow state and the other in a fast one. Our
one-epoch quality run (AUC) is in the first round only; the peer's script
always runs its epoch first. Peak RSS and the first step: the worst round.
Clean repeats: the fewest of any round. Each round's ratios are kept in the
line (`rounds`).

Order: the side that runs first alternates from pair to pair (peer first for
mmoe, ours first for ple, peer first for shared_bottom) and from round to
round, so neither side always gets the first slot (warm page cache for the
data file, a neighbour's job that starts or ends in the middle of the run).
The runs of a pair are adjacent, so a pair is measured minutes apart, not a
whole run apart. `--order peer-first|ours-first` fixes the first round's
order (later rounds still alternate).

Output: one JSON line per pair (`"kind": "pair"`: both sides' figures under
common names, the ratios, and each speed target with its value and
whether it holds), then one `"kind": "run"` line (machine, with its JAX
float32 GEMM speed from `benchmarks.gemm_ceiling`, versions, settings,
commands); `--out FILE` writes the same lines. The raw records of
both sides are kept under `raw`.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

from benchmarks import train_throughput as tt

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PEER_BENCH = REPO_ROOT.parent / "shared" / "bench" / "peer_bench.py"
DEFAULT_PEER_VENV = REPO_ROOT.parent / "peer_venv"
# (ours, the peer's) model names.
PAIRS = (("mmoe", "rechub_mmoe"), ("ple", "rechub_ple"),
         ("shared_bottom", "rechub_sharedbottom"))
TASKS = tt.TASKS

# The speed targets ("Speed: train MMoE at 2.2x torch-rechub ...").
TRAIN_RATIO_TARGET = {"mmoe": 2.2, "ple": 2.2, "shared_bottom": 2.0}
INFER_RATIO_TARGET = 1.4
AUC_TOLERANCE = 0.002
FIRST_STEP_LIMIT_S = 15.0

# Inference repeats of 100 batches of 4096 (5 s ours, 7.5 s the peer's, for
# MMoE / PLE): at the peer script's default of 20 a repeat lasted ~1 s, less
# than one of the machine's slow episodes (several seconds ~10% slower, seen
# on both sides), so one episode could cover all three repeats of one side
# (docs/benchmarks.md, "Method"). The benchmark fixes the batch, not the count.
FULL = dict(warmup=20, steps=200, repeats=3, max_repeats=5, infer_batches=100,
            idle_wait=60.0, epoch_steps=0, rounds=3)
# Smoke: both sides truncate the quality epoch to `epoch_steps` steps (ours
# through --max-train-rows, the peer's through PEER_SMOKE_EPOCH_STEPS), so
# the AUCs of a smoke run mean nothing.
QUICK = dict(warmup=2, steps=10, repeats=1, max_repeats=1, infer_batches=2,
             idle_wait=0.0, epoch_steps=10, rounds=1)

# The peer's field names (peer_bench.py worker records) -> ours.
PEER_FIELDS = {
    "n_params": "params", "n_params_dense": "params_dense",
    "epoch_seconds": "epoch_s", "test_auc_ctr": "auc_ctr",
    "test_auc_cvr": "auc_cvr", "test_logloss_ctr": "logloss_ctr",
    "test_logloss_cvr": "logloss_cvr", "wall_seconds": "wall_s"}
COMMON = ("params", "params_dense", "epoch_s", "epoch_steps",
          "train_examples_per_sec", "train_clean_repeats",
          "train_examples_per_sec_all", "train_other_procs_cpu_share",
          "infer_examples_per_sec", "infer_clean_repeats",
          "infer_examples_per_sec_all", "infer_other_procs_cpu_share",
          "auc_ctr", "auc_cvr", "logloss_ctr", "logloss_cvr", "peak_rss_mib",
          "rss_after_data_load_mib", "wall_s", "error")
OURS_ONLY = ("first_step_s", "compile_s", "recompiles_after_first_step",
             "rss_peak_after_mib", "data_sha256", "jax_version")


# ------------------------------------------------------------- comparison


def normalise(rec, side):
  """A side's record under the common field names (missing -> None)."""
  rec = dict(rec or {})
  if side == "peer":
    rec = {PEER_FIELDS.get(k, k): v for k, v in rec.items()}
  keys = COMMON + (OURS_ONLY if side == "ours" else ())
  return {k: rec.get(k) for k in keys}


def _num(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool)


RATES = ("train_examples_per_sec", "infer_examples_per_sec")
WORST = ("peak_rss_mib", "rss_after_data_load_mib", "first_step_s",
         "compile_s")


def merge_rounds(recs):
  """One side's normalised records of several rounds -> one record.

  Rates: the median of the rounds' medians (each round's list of repeats
  is kept, concatenated, under `*_all`). Clean repeats: the fewest of any
  round. Peak RSS, first step, compile time: the worst round. Recompiles
  and wall time: summed. Quality (AUC, logloss, epoch): the first round
  that has it. Errors: every round's, joined.
  """
  if len(recs) == 1:
    return dict(recs[0])
  out = {}
  for k in recs[0]:
    vals = [r.get(k) for r in recs]
    nums = [v for v in vals if _num(v)]
    if k in RATES:
      out[k] = statistics.median(nums) if nums else None
    elif k.endswith("_clean_repeats"):
      out[k] = min(v if _num(v) else 0 for v in vals)
    elif k in WORST:
      out[k] = max(nums) if nums else None
    elif k == "rss_peak_after_mib":
      rss = [r.get("peak_rss_mib") for r in recs]
      best = max(range(len(recs)),
                 key=lambda i: rss[i] if _num(rss[i]) else -1)
      out[k] = vals[best]
    elif k in ("recompiles_after_first_step", "wall_s"):
      out[k] = sum(nums) if nums else None
    elif k.endswith("_all") or k.endswith("_cpu_share"):
      out[k] = [x for v in vals if isinstance(v, list) for x in v]
    elif k == "error":
      errs = [f"round {i + 1}: {v}" for i, v in enumerate(vals) if v]
      out[k] = "; ".join(errs) if errs else None
    else:
      out[k] = next((v for v in vals if v is not None), None)
  return out


def ratio(a, b):
  return round(a / b, 3) if _num(a) and _num(b) and b > 0 else None


def rate_ratios(o, p):
  """{"train_ratio", "infer_ratio"}: ours over the peer's examples/s."""
  return {f"{k.split('_')[0]}_ratio": ratio(o[k], p[k]) for k in RATES}


def round_line(order, o, p):
  """One round's entry of a pair line: the order, both sides' rates, the
  ratios."""
  return {"order": order,
          **{f"{side}_{k}": r[k] for side, r in (("ours", o), ("peer", p))
             for k in RATES},
          **rate_ratios(o, p)}


def _target(value, need, ok):
  return {"value": value, "need": need, "ok": ok if _num(value) else None}


def targets(pair, o, p):
  """Each speed target for one pair: value, requirement, holds?"""
  train_x = ratio(o["train_examples_per_sec"], p["train_examples_per_sec"])
  infer_x = ratio(o["infer_examples_per_sec"], p["infer_examples_per_sec"])
  need_x = TRAIN_RATIO_TARGET.get(pair)
  out = {"train_ratio": _target(
      train_x, f">= {need_x}x peer" if need_x else "(none)",
      need_x is None or (_num(train_x) and train_x >= need_x))}
  out["infer_ratio"] = _target(infer_x, f">= {INFER_RATIO_TARGET}x peer",
                               _num(infer_x) and infer_x >= INFER_RATIO_TARGET)
  for t in TASKS:
    diff = (round(o[f"auc_{t}"] - p[f"auc_{t}"], 4)
            if _num(o[f"auc_{t}"]) and _num(p[f"auc_{t}"]) else None)
    # Rounded to 4 digits first, so -0.002 exactly holds.
    out[f"auc_{t}"] = _target(diff, f">= -{AUC_TOLERANCE} vs peer",
                              _num(diff) and diff >= -AUC_TOLERANCE)
  out["first_step_s"] = _target(
      o["first_step_s"], f"<= {FIRST_STEP_LIMIT_S:g} s",
      _num(o["first_step_s"]) and o["first_step_s"] <= FIRST_STEP_LIMIT_S)
  rec = o["recompiles_after_first_step"]
  out["recompiles"] = _target(rec, "== 0", rec == 0)
  rss_x = ratio(o["peak_rss_mib"], p["peak_rss_mib"])
  out["peak_rss"] = _target(rss_x, "<= 1x peer", _num(rss_x) and rss_x <= 1.0)
  return out


def compare(pair, peer_model, ours_rec, peer_rec, *, repeats, smoke,
            peer_sha=None, order=None):
  """One `"kind": "pair"` line from both sides' records.

  Args:
    pair: our model name (mmoe, ple, shared_bottom).
    peer_model: the peer's model name (rechub_mmoe, ...).
    ours_rec: train_throughput's JSON record for `pair`, or a list of them,
      one per round (`merge_rounds`).
    peer_rec: peer_bench's worker record for `peer_model`, or a list of them
      (as many as ours).
    repeats: clean repeats each side was asked for (in every round).
    smoke: a --quick run (figures are not measurements).
    peer_sha: the peer's `data.content_sha256`, to check both read one file.
    order: the sides in the order they ran (per round: a list, ";"-joined).
  Returns:
    A JSON-serialisable dict; `targets_met` is True / False when every
    target could be evaluated, else None; `valid` says whether the run can
    be quoted (not a smoke run, every timed figure from >= `repeats` clean
    repeats on both sides, the same data, no errors).
  """
  ours_recs = ours_rec if isinstance(ours_rec, list) else [ours_rec]
  peer_recs = peer_rec if isinstance(peer_rec, list) else [peer_rec]
  if len(ours_recs) != len(peer_recs):
    raise ValueError(f"{len(ours_recs)} rounds of ours, {len(peer_recs)} of "
                     "the peer's")
  ours_n = [normalise(r, "ours") for r in ours_recs]
  peer_n = [normalise(r, "peer") for r in peer_recs]
  o, p = merge_rounds(ours_n), merge_rounds(peer_n)
  orders = order if isinstance(order, list) else [order] * len(ours_n)
  line = {"kind": "pair", "pair": pair, "ours_model": pair,
          "peer_model": peer_model, "smoke": bool(smoke),
          "order": ";".join(x for x in orders if x) or None,
          "rounds": [round_line(*x) for x in zip(orders, ours_n, peer_n)]}
  for k in ("train_examples_per_sec", "infer_examples_per_sec", "auc_ctr",
            "auc_cvr", "logloss_ctr", "logloss_cvr", "peak_rss_mib",
            "rss_after_data_load_mib", "params", "params_dense", "epoch_s",
            "train_clean_repeats", "infer_clean_repeats"):
    line[f"ours_{k}"], line[f"peer_{k}"] = o[k], p[k]
  for k in ("first_step_s", "compile_s", "recompiles_after_first_step",
            "rss_peak_after_mib"):
    line[f"ours_{k}"] = o[k]
  line.update(rate_ratios(o, p))
  for t in TASKS:
    line[f"auc_{t}_diff"] = (
        round(o[f"auc_{t}"] - p[f"auc_{t}"], 4)
        if _num(o[f"auc_{t}"]) and _num(p[f"auc_{t}"]) else None)
  line["rss_ratio"] = ratio(o["peak_rss_mib"], p["peak_rss_mib"])
  line["targets"] = targets(pair, o, p)
  oks = [t["ok"] for t in line["targets"].values()]
  line["targets_met"] = None if None in oks else all(oks)
  line["same_data"] = (None if not (peer_sha and o["data_sha256"])
                       else peer_sha == o["data_sha256"])
  line["errors"] = [f"{side}: {r['error']}" for side, r in
                    (("ours", o), ("peer", p)) if r["error"]]
  clean = all((r[k] or 0) >= repeats for r in (o, p)
              for k in ("train_clean_repeats", "infer_clean_repeats"))
  line["all_clean"] = clean
  line["valid"] = (clean and not smoke and not line["errors"]
                   and line["same_data"] is not False)
  line["raw"] = {"ours": ours_rec, "peer": peer_rec}  # a list per round
  return line


# --------------------------------------------------------------- markdown


def read_lines(path):
  with open(path) as f:
    return [json.loads(s) for s in f if s.strip()]


def _f(x, fmt="{:,.0f}"):
  return "–" if not _num(x) else fmt.format(x)


def _mark(t, fmt):
  if t["ok"] is None:
    return "–"
  return ("✓ " if t["ok"] else "✗ ") + _f(t["value"], fmt)


def render_markdown(lines):
  """The page's tables (figures, then targets) from compare_peer's lines."""
  pairs = [l for l in lines if l.get("kind") == "pair"]
  run = next((l for l in lines if l.get("kind") == "run"), {})
  out = []
  if any(l["smoke"] for l in pairs):
    out.append("**SMOKE RUN (`--quick`): truncated epoch and timing; these "
               "figures are not measurements and no target is judged by "
               "them.**\n")
  if run:
    m = run.get("machine", {})
    v = run.get("versions", {})
    settings = ", ".join(f"{k} {x}" for k, x in run.get("settings", {}).items())
    order = "; ".join(
        f"{l['pair']}: " + ", ".join(o.replace(",", " then ")
                                     for o in l["order"].split(";"))
        for l in pairs if l.get("order"))
    out.append(
        f"Run {run.get('started_at', '?')} to {run.get('finished_at', '?')}; "
        f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs "
        f"({m.get('simd', '?')}"
        + (f"; JAX float32 GEMM {m['gemm_gflops']:g} GFLOP/s"
           if m.get("gemm_gflops") else "") +
        f"); ours: jax {v.get('jax', '?')}; peer: "
        f"torch {v.get('torch', '?')}, torch-rechub "
        f"{v.get('torch-rechub', '?')}. Settings (both sides): {settings}. "
        f"Order: {order or '?'}.\n")
  out.append(
      "| ours / peer | train ex/s ours | peer | × | infer ex/s ours | peer "
      "| × | AUC ctr ours / peer (Δ) | AUC cvr ours / peer (Δ) "
      "| first step s (AOT compile s) | peak RSS MiB ours / peer "
      "| clean repeats train, infer: ours / peer | valid |")
  out.append("|" + "---|" * 13)
  for l in pairs:
    aucs = [f"{_f(l[f'ours_auc_{t}'], '{:.4f}')} / "
            f"{_f(l[f'peer_auc_{t}'], '{:.4f}')} "
            f"({_f(l[f'auc_{t}_diff'], '{:+.4f}')})" for t in TASKS]
    clean = " / ".join(
        ", ".join(_f(l[f"{side}_{k}_clean_repeats"], "{}")
                  for k in ("train", "infer")) for side in ("ours", "peer"))
    valid = "yes" if l["valid"] else "smoke" if l["smoke"] else "no"
    out.append(
        f"| {l['ours_model']} / {l['peer_model']} "
        f"| {_f(l['ours_train_examples_per_sec'])} "
        f"| {_f(l['peer_train_examples_per_sec'])} "
        f"| {_f(l['train_ratio'], '{:.2f}')} "
        f"| {_f(l['ours_infer_examples_per_sec'])} "
        f"| {_f(l['peer_infer_examples_per_sec'])} "
        f"| {_f(l['infer_ratio'], '{:.2f}')} | {aucs[0]} | {aucs[1]} "
        f"| {_f(l['ours_first_step_s'], '{:.1f}')} "
        f"({_f(l['ours_compile_s'], '{:.1f}')}) "
        f"| {_f(l['ours_peak_rss_mib'])} / {_f(l['peer_peak_rss_mib'])} "
        f"| {clean} | {valid} |")
  out.append("")
  out.append("Targets (✓ holds, ✗ misses, – not measured):\n")
  out.append("| ours | train × | infer × (≥ 1.4) | AUC ctr Δ (≥ −0.002) "
             "| AUC cvr Δ | first step s (≤ 15) | recompiles (0) "
             "| RSS × peer (≤ 1) | all |")
  out.append("|" + "---|" * 9)
  for l in pairs:
    t = l["targets"]
    need = TRAIN_RATIO_TARGET.get(l["pair"])
    met = {True: "yes", False: "no", None: "–"}[l["targets_met"]]
    if l["smoke"]:
      met += " (smoke)"
    elif not l["valid"]:
      met += " (not valid)"
    out.append(
        f"| {l['ours_model']} "
        f"| {_mark(t['train_ratio'], '{:.2f}')}"
        f"{f' (≥ {need})' if need else ''} "
        f"| {_mark(t['infer_ratio'], '{:.2f}')} "
        f"| {_mark(t['auc_ctr'], '{:+.4f}')} "
        f"| {_mark(t['auc_cvr'], '{:+.4f}')} "
        f"| {_mark(t['first_step_s'], '{:.1f}')} "
        f"| {_mark(t['recompiles'], '{:d}')} "
        f"| {_mark(t['peak_rss'], '{:.2f}')} | {met} |")
  n_rounds = max((len(l.get("rounds") or ()) for l in pairs), default=0)
  if n_rounds > 1:
    out.append("\nEach round (fresh processes; the side that ran first "
               "alternates): train × / infer ×, ours' examples/s / the "
               "peer's.\n")
    out.append("| ours | " + " | ".join(
        f"round {i + 1}" for i in range(n_rounds)) + " |")
    out.append("|" + "---|" * (n_rounds + 1))
    for l in pairs:
      cells = [
          f"{_f(r['train_ratio'], '{:.2f}')} / "
          f"{_f(r['infer_ratio'], '{:.2f}')} "
          f"(train {_f(r['ours_train_examples_per_sec'])} / "
          f"{_f(r['peer_train_examples_per_sec'])}; infer "
          f"{_f(r['ours_infer_examples_per_sec'])} / "
          f"{_f(r['peer_infer_examples_per_sec'])})"
          for r in l.get("rounds") or ()]
      out.append(f"| {l['ours_model']} | " + " | ".join(cells) + " |")
  errors = [e for l in pairs for e in l["errors"]]
  if errors:
    out.append("\nErrors: " + "; ".join(errors))
  return "\n".join(out) + "\n"


BEGIN, END = "<!-- compare_peer:begin -->", "<!-- compare_peer:end -->"


def splice(page, table):
  """`page` with the text between the BEGIN / END markers set to `table`."""
  i, j = page.find(BEGIN), page.find(END)
  if i < 0 or j < i:
    raise ValueError(f"markers {BEGIN} ... {END} not found in the page")
  return page[:i + len(BEGIN)] + "\n" + table + page[j:]


# ------------------------------------------------------------------ runs


def peer_python(flag=None):
  if flag:
    return flag
  if os.environ.get("PEER_PYTHON"):
    return os.environ["PEER_PYTHON"]
  venv = os.environ.get("PEER_VENV") or str(DEFAULT_PEER_VENV)
  return os.path.join(venv, "bin", "python")


def peer_versions(python):
  """torch / torch-rechub / numpy versions in the peer's Python, or raises."""
  code = ("import importlib.metadata as m, json, platform;"
          "import torch, torch_rechub;"
          "print(json.dumps({'python': platform.python_version(), "
          "**{p: m.version(p) for p in ('torch', 'torch-rechub', 'numpy')}}))")
  try:
    proc = subprocess.run([python, "-c", code], capture_output=True,
                          text=True, check=False, env=_peer_env())
  except OSError as e:
    proc = subprocess.CompletedProcess([python], 127, "", str(e))
  if proc.returncode:
    raise RuntimeError(
        f"the peer's Python {python} cannot import torch / torch_rechub "
        f"(install it as ../shared/bench/PEER.md says, then pass "
        f"--peer-python or set PEER_PYTHON):\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer_env(smoke_epoch_steps=0):
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
  env.pop("PEER_SMOKE_EPOCH_STEPS", None)
  if smoke_epoch_steps:
    env["PEER_SMOKE_EPOCH_STEPS"] = str(smoke_epoch_steps)
  return env


def _common_flags(s):
  return ["--warmup", str(s["warmup"]), "--steps", str(s["steps"]),
          "--repeats", str(s["repeats"]), "--max-repeats",
          str(s["max_repeats"]), "--infer-batches", str(s["infer_batches"]),
          "--idle-wait", str(s["idle_wait"])]


def ours_command(model, data, s, out, quick, epoch=True):
  """train_throughput's command; `epoch=False` (rounds after the first):
  no quality epoch."""
  cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--models",
         model, "--data", data, "--out", out] + _common_flags(s)
  if quick:  # quick's pipeline settings (and no epoch unless asked below)
    cmd.append("--quick")
  if not epoch:
    cmd.append("--no-epoch")
  elif s["epoch_steps"]:  # a truncated epoch over the first rows
    cmd += ["--epoch", "--max-train-rows", str(s["epoch_steps"] * 1024)]
  return cmd


def peer_command(python, bench, model, data, s, out):
  return [python, str(bench), "--models", model, "--data", data,
          "--out", out] + _common_flags(s)


def run_ours(model, data, s, quick, tmp, round_index=0):
  out = os.path.join(tmp, f"ours_{model}_{round_index}.jsonl")
  env = tt.repo_env()
  cmd = ours_command(model, data, s, out, quick, epoch=round_index == 0)
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=sys.stderr,
                        check=False)
  if os.path.exists(out):
    return read_lines(out)[-1]
  return {"model": model, "error": f"train_throughput exit {proc.returncode}"}


def run_peer(python, bench, model, data, s, tmp, round_index=0):
  """Runs peer_bench.py for one model; (its record, its data summary)."""
  out = os.path.join(tmp, f"peer_{model}_{round_index}.json")
  cmd = peer_command(python, bench, model, data, s, out)
  proc = subprocess.run(cmd, cwd=os.path.dirname(str(bench)),
                        env=_peer_env(s["epoch_steps"]), stdout=sys.stderr,
                        check=False)
  if not os.path.exists(out):
    return {"model": model,
            "error": f"peer_bench exit {proc.returncode}"}, {}, {}
  with open(out) as f:
    res = json.load(f)
  rec = next((r for r in res.get("models", []) if r.get("model") == model),
             {"model": model, "error": "no record in results.json"})
  return rec, res.get("data", {}), res.get("versions", {})


def machine():
  info = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
    for row in text.splitlines():
      if row.startswith("model name"):
        info["cpu_model"] = row.split(":", 1)[1].strip()
      if row.startswith("flags"):
        flags = set(row.split(":", 1)[1].split())
        info["simd"] = " ".join(x for x in ("avx2", "fma", "avx512f",
                                            "avx512_bf16", "amx_tile")
                                if x in flags)
        break
    with open("/proc/meminfo") as f:
      kb = int(f.readline().split()[1])
    info["mem_gib"] = round(kb / 2**20, 1)
  except OSError:
    pass
  return info


def gemm_ceiling():
  """`benchmarks.gemm_ceiling`'s GFLOP/s, in a fresh process (None if it
  fails): the ceiling the MMoE step is bound by, which tells hosts apart."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.gemm_ceiling"],
                        cwd=REPO_ROOT, capture_output=True, text=True,
                        check=False)
  try:
    return json.loads(proc.stdout.strip().splitlines()[-1])["gflops"]
  except (IndexError, KeyError, ValueError):
    return None


def _git_state():
  def git(*a):
    return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=False).stdout.strip()
  return {"commit": git("rev-parse", "HEAD"),
          "dirty_files": len(git("status", "--porcelain").splitlines())}


def _now():
  return datetime.datetime.now().isoformat(timespec="seconds")


def run(args, settings):
  """Runs every pair; prints / writes the JSON lines; returns the exit code."""
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  known = dict(PAIRS)
  unknown = [m for m in names if m not in known]
  if unknown:
    raise ValueError(f"unknown pair(s) {unknown}; valid: {sorted(known)}")
  python = peer_python(args.peer_python)
  bench = pathlib.Path(args.peer_bench or os.environ.get("PEER_BENCH")
                       or DEFAULT_PEER_BENCH)
  peer_ver = peer_versions(python)  # fails early, before any long run
  data = os.path.abspath(args.data)
  tt.ensure_data(data, args.generator)
  header = {"kind": "run", "started_at": _now(), "quick": args.quick,
            "settings": settings, "order": args.order, "data": data,
            "machine": {**machine(), "gemm_gflops": gemm_ceiling()},
            "git": _git_state(),
            "loadavg_start": tt.loadavg(), "peer_python": python,
            "peer_bench": str(bench), "versions": dict(peer_ver)}
  lines, failed = [], False
  with tempfile.TemporaryDirectory() as tmp:
    for i, name in enumerate(names):
      peer_first = (args.order == "peer-first" or
                    (args.order == "alternate" and i % 2 == 0))
      recs, orders, peer_data = {"ours": [], "peer": []}, [], {}
      for r in range(settings["rounds"]):
        sides = (("peer", "ours") if peer_first == (r % 2 == 0)
                 else ("ours", "peer"))
        orders.append(",".join(sides))
        for side in sides:
          print(f"# {_now()} round {r + 1}/{settings['rounds']} {side}: "
                f"{name if side == 'ours' else known[name]}; loadavg "
                f"{tt.loadavg()}", file=sys.stderr, flush=True)
          if side == "ours":
            recs["ours"].append(
                run_ours(name, data, settings, args.quick, tmp, r))
          else:
            rec, summary, pv = run_peer(python, bench, known[name], data,
                                        settings, tmp, r)
            recs["peer"].append(rec)
            peer_data = peer_data or summary
            header["versions"].update(
                {k: v for k, v in pv.items() if k in ("scikit-learn",)})
      line = compare(name, known[name], recs["ours"], recs["peer"],
                     repeats=settings["repeats"], smoke=args.quick,
                     peer_sha=peer_data.get("content_sha256"), order=orders)
      header["versions"]["jax"] = (recs["ours"][0].get("jax_version")
                                   or header["versions"].get("jax"))
      failed = failed or bool(line["errors"])
      lines.append(json.dumps(line))
      print(lines[-1], flush=True)
      if args.out:
        with open(args.out, "w") as f:
          f.write("\n".join(lines) + "\n")
  header.update(finished_at=_now(), loadavg_end=tt.loadavg(),
                commands={"ours": " ".join(ours_command(
                    "MODEL", data, settings, "OUT", args.quick)),
                          "ours_later_rounds": " ".join(ours_command(
                              "MODEL", data, settings, "OUT", args.quick,
                              epoch=False)),
                          "peer": " ".join(peer_command(
                              python, bench, "MODEL", data, settings, "OUT"))})
  lines.append(json.dumps(header))
  print(lines[-1], flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")
  return 1 if failed else 0


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(m for m, _ in PAIRS),
                 help="comma list of our model names (each with its peer)")
  p.add_argument("--data", default=tt.DEFAULT_DATA)
  p.add_argument("--generator", default=str(tt.DEFAULT_GENERATOR))
  p.add_argument("--peer-python", help="default $PEER_PYTHON, else "
                 f"$PEER_VENV/bin/python, else {DEFAULT_PEER_VENV}/bin/python")
  p.add_argument("--peer-bench", help="default $PEER_BENCH, else "
                 f"{DEFAULT_PEER_BENCH}")
  p.add_argument("--order", default="alternate",
                 choices=("alternate", "peer-first", "ours-first"))
  for key in FULL:
    p.add_argument("--" + key.replace("_", "-"), type=type(FULL[key]),
                   help=f"both sides (default {FULL[key]}, quick "
                   f"{QUICK[key]})" + ("; 0 = the whole epoch"
                                       if key == "epoch_steps" else ""))
  p.add_argument("--quick", action="store_true", help="smoke run")
  p.add_argument("--out", help="also write the JSON lines to this file")
  p.add_argument("--markdown", metavar="JSONL",
                 help="render the tables from a JSON-lines file and exit")
  p.add_argument("--doc", help="with --markdown: write the tables into this "
                 f"page between {BEGIN} and {END} instead of stdout")
  args = p.parse_args(argv)
  settings = dict(QUICK if args.quick else FULL)
  for key in FULL:
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  return args, settings


def main(argv=None):
  args, settings = parse_args(argv)
  if args.markdown:
    table = render_markdown(read_lines(args.markdown))
    if args.doc:
      page = pathlib.Path(args.doc)
      page.write_text(splice(page.read_text(), table))
    else:
      sys.stdout.write(table)
    return 0
  try:
    return run(args, settings)
  except (RuntimeError, ValueError) as e:  # no peer, unknown model
    print(f"compare_peer: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
