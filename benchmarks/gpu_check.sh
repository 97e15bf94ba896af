#!/usr/bin/env bash
# The GPU check, one command from the repository root on a GPU machine:
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--quick] [--budget S] [--data PATH]
#       [--generator PATH]
#
# 1. the card (`nvidia-smi -L`) and the JAX backend and devices;
# 2. the smoke config end to end (`experiments.run ...:smoke`);
# 3. `benchmarks.train_throughput` on the default MMoE workload in float32
#    and bfloat16 at batch 1024 and 16384, and float32 at batch 1024 with
#    train.steps_per_call=8 (against the k=1 line of the same settings);
# 4. the multi-device tests (tests/train/test_parallel.py, test_sharding.py):
#    on the GPUs when there are 8 (the tests' device count), else on 8 fake
#    CPU devices (JAX_PLATFORMS=cpu), which summary.txt says.
#
# OUT_DIR (default $OUT) gets summary.txt (card, versions, each step's exit
# status and seconds), smoke.log, smoke_results.json, smoke_metrics.jsonl,
# throughput.jsonl (one JSON line per benchmark run), throughput.log and
# tests.log. A failing step does not stop the others; the exit status is 1
# if any failed. The steps share a budget of --budget seconds (default 450,
# so the whole script ends within 8 minutes): each runs under a timeout of
# what is left, and a step with under 20 s left is skipped (summary.txt
# says so). Repeats are kept small: each benchmark run is its own process,
# whose start-up and compiles take most of its time.
#
# --quick: a CPU dry run (smaller batches, the benchmark's --quick, a few
# tests) that shows the script runs end to end; its numbers mean nothing.
# --data / --generator: the benchmark's workload file, and the generator
# that writes it when missing (default: .gpu_deps/make_bench_data.py if
# there, else the benchmark's own default, ../shared/bench/ beside the
# repository; copy the generator into .gpu_deps/ where that is absent).
# $PYTHON picks the interpreter (default python3). Python packages the
# machine lacks can be put as wheels in .gpu_deps/ (git-ignored); they are
# installed into a temporary directory first.
set -u
OUT_DIR=${OUT:-}
QUICK=0
BUDGET=450
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --budget) BUDGET=$2; shift ;;
    --data|--generator) BENCH_ARGS+=("$1" "$2"); shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) OUT_DIR=$1 ;;
  esac
  shift
done
[ -n "$OUT_DIR" ] || { echo "usage: $0 OUT_DIR [--quick] [--budget S] [--data PATH] [--generator PATH]" >&2; exit 2; }
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
SUMMARY=$OUT_DIR/summary.txt
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAILED=0
DEADLINE=$(( $(date +%s) + BUDGET ))

if [ -f .gpu_deps/make_bench_data.py ] && [[ " ${BENCH_ARGS[*]-} " != *" --generator "* ]]; then
  BENCH_ARGS+=(--generator .gpu_deps/make_bench_data.py)
fi
if ls .gpu_deps/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$WORK/site" .gpu_deps/*.whl && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

step() {  # step NAME LOG COMMAND...: runs it within the budget's time left
  local name=$1 log=$2 t0 rc left
  shift 2
  t0=$(date +%s)
  left=$(( DEADLINE - t0 ))
  if [ "$left" -lt 20 ]; then
    echo "$name: skipped, the --budget is spent" | tee -a "$SUMMARY"
    FAILED=1
    return
  fi
  echo "### $name: $*" >>"$log"
  timeout "$left" "$@" >>"$log" 2>&1
  rc=$?
  echo "$name: exit $rc, $(( $(date +%s) - t0 )) s" | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || FAILED=1
}

bench() {  # bench NAME ARGS...: one benchmarks.train_throughput line
  local name=$1
  shift
  rm -f "$WORK/line.jsonl"
  step "$name" "$OUT_DIR/throughput.log" "$PY" -m benchmarks.train_throughput \
      --models mmoe "$@" "${BENCH[@]}" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
      --out "$WORK/line.jsonl"
  cat "$WORK/line.jsonl" >>"$OUT_DIR/throughput.jsonl" 2>/dev/null
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>&1
  else echo "nvidia-smi: not found"; fi
  "$PY" -c 'import jax, flax, sys; print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__); print("backend", jax.default_backend(), jax.devices())' 2>&1
} >"$SUMMARY"
cat "$SUMMARY"

if [ "$QUICK" = 1 ]; then
  BATCHES="256 2048"; SMOKE=(--config.train.num_steps=12); KSTEP=4
  BENCH=(--quick --idle-wait 0)
  TESTS=(tests/train/test_parallel.py tests/train/test_sharding.py
         -k "eight_fake_devices_exist or unknown_mode or test_parse")
else
  BATCHES="1024 16384"; SMOKE=(); KSTEP=8
  BENCH=(--repeats 2 --max-repeats 2 --idle-wait 0 --infer-batches 20
         --pipeline-batches 50)
  TESTS=(tests/train/test_parallel.py tests/train/test_sharding.py)
  if "$PY" -c "import xdist" 2>/dev/null; then TESTS+=(-n 4); fi
fi

step smoke "$OUT_DIR/smoke.log" "$PY" -m experiments.run \
    --config configs/synthetic_mmoe.py:smoke --workdir "$WORK/smoke" \
    --config.train.tensorboard=False ${SMOKE[@]+"${SMOKE[@]}"}
cp "$WORK/smoke/results.json" "$OUT_DIR/smoke_results.json" 2>/dev/null
cp "$WORK/smoke/metrics.jsonl" "$OUT_DIR/smoke_metrics.jsonl" 2>/dev/null

for batch in $BATCHES; do
  for dtype in float32 bfloat16; do
    bench "mmoe_${dtype}_batch${batch}" --batch-size "$batch" \
        --compute-dtype "$dtype"
  done
done
bench "mmoe_float32_batch${BATCHES%% *}_steps_per_call${KSTEP}" \
    --batch-size "${BATCHES%% *}" --steps-per-call "$KSTEP"

GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$QUICK" = 0 ] && [ "$GPUS" -ge 8 ]; then
  echo "multi-device tests: on the $GPUS GPUs" | tee -a "$SUMMARY"
  step tests "$OUT_DIR/tests.log" "$PY" -m pytest -q "${TESTS[@]}"
else
  echo "multi-device tests: on 8 fake CPU devices (JAX_PLATFORMS=cpu;" \
      "the tests need 8 devices, the machine has $GPUS GPU(s))" \
      | tee -a "$SUMMARY"
  step tests "$OUT_DIR/tests.log" env JAX_PLATFORMS=cpu \
      "$PY" -m pytest -q "${TESTS[@]}"
fi
tail -n 1 "$OUT_DIR/tests.log" 2>/dev/null >>"$SUMMARY"

"$PY" - "$OUT_DIR/throughput.jsonl" <<'EOF' | tee -a "$SUMMARY"
import json, os, sys
if not os.path.exists(sys.argv[1]):
  sys.exit("no benchmark lines")
print("model dtype batch k | train ex/s | step ms | infer ex/s | compile s | AUC ctr/cvr")
for line in open(sys.argv[1]):
  r = json.loads(line)
  if "error" in r:
    print(r.get("model"), "error:", r["error"]); continue
  print(r["model"], r["compute_dtype"], r["batch_size"], r.get("steps_per_call", 1), "|",
        r["train_examples_per_sec"], "|", r["train_step_ms"], "|",
        r["infer_examples_per_sec"], "|", r.get("compile_s"), "|",
        r.get("auc_ctr"), "/", r.get("auc_cvr"))
EOF
exit $FAILED
