"""Splitting one machine's accelerators among `--parallel N` sweep runs.

Without a split every subprocess would see every GPU and preallocate 75% of
each (the second one runs out of memory), or fail to open TPU chips that
the first one holds. `slot_env(platform, ids, slot, num_slots)` gives the
environment of the run in slot `slot` (0 <= slot < num_slots):

  cpu            nothing (the runs share the host, as before);
  cuda / rocm    N <= D GPUs: D // N GPUs each (CUDA_VISIBLE_DEVICES /
                 HIP_VISIBLE_DEVICES), memory settings untouched;
                 N > D: one GPU each, round robin, k = ceil(N / D) runs per
                 GPU, each preallocating 0.9 / k of its memory
                 (XLA_CLIENT_MEM_FRACTION and its older name
                 XLA_PYTHON_CLIENT_MEM_FRACTION), so the k runs fit;
  tpu            C chips: C // N chips each (1, 2 or 4: a chip box the TPU
                 runtime accepts) through TPU_VISIBLE_CHIPS with
                 TPU_CHIPS_PER_PROCESS_BOUNDS / TPU_PROCESS_BOUNDS and a
                 port of its own; a chip cannot be shared, so N > C stops.

`probe()` asks a short-lived child process which accelerators JAX sees, so
the driver itself never opens them (that would hold them against its runs).
"""
import json
import math
import os
import subprocess
import sys
from typing import Dict, List, Sequence, Tuple

from mtkd_jax import errors

VISIBLE = {"cuda": "CUDA_VISIBLE_DEVICES", "rocm": "HIP_VISIBLE_DEVICES",
           "tpu": "TPU_VISIBLE_CHIPS"}
# Chips per process -> TPU_CHIPS_PER_PROCESS_BOUNDS (x, y, z chip box).
TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}
TPU_BASE_PORT = 8476
GPU_MEMORY_SHARED = 0.9  # of each GPU, split among the runs that share it


def _gpu_env(platform: str, ids: Sequence[str], slot: int,
             num_slots: int) -> Dict[str, str]:
  d = len(ids)
  if num_slots <= d:
    per = d // num_slots
    return {VISIBLE[platform]: ",".join(ids[slot * per:(slot + 1) * per])}
  runs_per_gpu = math.ceil(num_slots / d)
  fraction = f"{math.floor(GPU_MEMORY_SHARED / runs_per_gpu * 100) / 100:.2f}"
  return {VISIBLE[platform]: ids[slot % d],
          "XLA_CLIENT_MEM_FRACTION": fraction,
          "XLA_PYTHON_CLIENT_MEM_FRACTION": fraction}


def _tpu_env(ids: Sequence[str], slot: int, num_slots: int) -> Dict[str, str]:
  if num_slots > len(ids):
    raise errors.ConfigError(
        f"--parallel {num_slots} needs a TPU chip per run, but this machine "
        f"has {len(ids)} (a chip cannot be shared between processes); use "
        f"--parallel {len(ids)} or fewer.")
  per = max(n for n in TPU_BOUNDS if n <= len(ids) // num_slots)
  port = TPU_BASE_PORT + slot
  return {"TPU_VISIBLE_CHIPS": ",".join(ids[slot * per:(slot + 1) * per]),
          "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_BOUNDS[per],
          "TPU_PROCESS_BOUNDS": "1,1,1",
          "TPU_PROCESS_PORT": str(port),
          "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
          "TPU_MESH_CONTROLLER_PORT": str(port)}


def slot_env(platform: str, ids: Sequence[str], slot: int,
             num_slots: int) -> Dict[str, str]:
  """The environment variables of the run in `slot` of `num_slots` parallel
  runs on a machine whose JAX `platform` ("cpu", "cuda", "rocm", "tpu")
  has accelerators `ids` (GPU ordinals or TPU chip indices, as the
  visibility variable takes them); see the module docstring.

  Raises:
    ConfigError: more parallel runs than TPU chips, or an unknown platform.
  """
  if not 0 <= slot < num_slots:
    raise ValueError(f"slot {slot} is not in [0, {num_slots}).")
  if platform == "cpu" or num_slots == 1 or not ids:
    return {}
  if platform in ("cuda", "rocm"):
    return _gpu_env(platform, list(ids), slot, num_slots)
  if platform == "tpu":
    return _tpu_env(list(ids), slot, num_slots)
  raise errors.ConfigError(f"Unknown platform {platform!r}; valid: cpu, "
                           f"{', '.join(VISIBLE)}.")


def describe(platform: str, ids: Sequence[str], num_slots: int) -> str:
  """One line saying how the runs share the accelerators."""
  if platform == "cpu" or num_slots == 1 or not ids:
    return f"{num_slots} parallel runs share the {platform} host."
  unit = "TPU chip" if platform == "tpu" else "GPU"
  if num_slots > len(ids):
    fraction = slot_env(platform, ids, 0, num_slots)["XLA_CLIENT_MEM_FRACTION"]
    return (f"{num_slots} parallel runs on {len(ids)} {unit}s: up to "
            f"{math.ceil(num_slots / len(ids))} per {unit}, each with "
            f"{fraction} of its memory.")
  groups = [slot_env(platform, ids, s, num_slots)[VISIBLE[platform]]
            for s in range(num_slots)]
  idle = len(ids) - sum(len(g.split(",")) for g in groups)
  return (f"{num_slots} parallel runs on {len(ids)} {unit}s, each run's "
          f"{unit}s: {' | '.join(groups)}" + (f" ({idle} idle)." if idle else "."))


_PROBE = r"""
import json, jax
devices = jax.local_devices()
platform = devices[0].platform
if platform == "gpu":
  platform = "rocm" if "rocm" in devices[0].client.platform_version.lower() else "cuda"
count = len(devices)
if platform == "tpu":
  count = len({tuple(getattr(d, "coords", (d.id,))) for d in devices})
print(json.dumps({"platform": platform, "count": count}))
"""


def probe(env=None) -> Tuple[str, List[str]]:
  """(platform, accelerator ids) JAX sees with `env` (default: ours), from a
  child process. Ids already restricted by the visibility variable are kept
  as given (a run under CUDA_VISIBLE_DEVICES=4,6 splits 4 and 6)."""
  env = dict(os.environ if env is None else env)
  if env.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return "cpu", []
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env,
                       capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise errors.ConfigError(
        "Could not list this machine's devices for --parallel: "
        f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}")
  found = json.loads(out.stdout.strip().splitlines()[-1])
  platform, count = found["platform"], int(found["count"])
  if platform not in VISIBLE:
    return platform, []
  given = [i for i in env.get(VISIBLE[platform], "").split(",") if i.strip()]
  ids = given if len(given) == count else [str(i) for i in range(count)]
  return platform, ids
