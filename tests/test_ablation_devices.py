"""`--parallel N` on accelerators: each run's share of the GPUs / TPU chips."""
import itertools
import os

import pytest

from mtkd_jax import errors
from mtkd_jax.ablation import devices


def envs(platform, ids, n):
  return [devices.slot_env(platform, ids, s, n) for s in range(n)]


def test_cpu_and_single_runs_change_nothing():
  assert envs("cpu", [], 4) == [{}] * 4
  assert envs("cpu", ["0", "1"], 2) == [{}, {}]
  assert envs("cuda", ["0", "1", "2", "3"], 1) == [{}]
  assert envs("tpu", ["0", "1", "2", "3"], 1) == [{}]


def test_gpus_split_into_disjoint_equal_groups():
  got = envs("cuda", [str(i) for i in range(8)], 4)
  assert got == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"},
                 {"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
  # 3 runs on 8 GPUs: 2 each, 2 idle; groups never overlap
  got = [e["CUDA_VISIBLE_DEVICES"].split(",") for e in
         envs("cuda", [str(i) for i in range(8)], 3)]
  assert got == [["0", "1"], ["2", "3"], ["4", "5"]]
  for a, b in itertools.combinations(got, 2):
    assert not set(a) & set(b)
  # ids restricted by the user's own CUDA_VISIBLE_DEVICES are kept as given
  assert envs("cuda", ["4", "6"], 2) == [{"CUDA_VISIBLE_DEVICES": "4"},
                                         {"CUDA_VISIBLE_DEVICES": "6"}]
  assert envs("rocm", ["0", "1"], 2)[1] == {"HIP_VISIBLE_DEVICES": "1"}


def test_more_runs_than_gpus_share_them_with_a_memory_share_each():
  got = envs("cuda", ["0", "1"], 5)  # 3 runs on GPU 0, 2 on GPU 1
  assert [e["CUDA_VISIBLE_DEVICES"] for e in got] == ["0", "1", "0", "1", "0"]
  assert {e["XLA_CLIENT_MEM_FRACTION"] for e in got} == {"0.30"}  # 0.9 / 3
  assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.30" for e in got)
  (one,) = {e["XLA_CLIENT_MEM_FRACTION"] for e in envs("cuda", ["0"], 2)}
  assert one == "0.45"
  assert devices.describe("cuda", ["0", "1"], 5) == (
      "5 parallel runs on 2 GPUs: up to 3 per GPU, each with 0.30 of its "
      "memory.")


def test_tpu_chips_split_into_boxes_with_own_ports():
  got = envs("tpu", ["0", "1", "2", "3"], 2)
  assert [e["TPU_VISIBLE_CHIPS"] for e in got] == ["0,1", "2,3"]
  assert {e["TPU_CHIPS_PER_PROCESS_BOUNDS"] for e in got} == {"1,2,1"}
  assert {e["TPU_PROCESS_BOUNDS"] for e in got} == {"1,1,1"}
  assert got[0]["TPU_PROCESS_PORT"] != got[1]["TPU_PROCESS_PORT"]
  # 3 runs on 4 chips: one chip each (a 1x1x1 box), one chip idle
  got = envs("tpu", ["0", "1", "2", "3"], 3)
  assert [e["TPU_VISIBLE_CHIPS"] for e in got] == ["0", "1", "2"]
  assert {e["TPU_CHIPS_PER_PROCESS_BOUNDS"] for e in got} == {"1,1,1"}
  assert devices.describe("tpu", ["0", "1", "2", "3"], 3) == (
      "3 parallel runs on 4 TPU chips, each run's TPU chips: 0 | 1 | 2 "
      "(1 idle).")
  # 2 runs on 8 chips (v5e host): a 2x2 box each
  got = envs("tpu", [str(i) for i in range(8)], 2)
  assert [e["TPU_VISIBLE_CHIPS"] for e in got] == ["0,1,2,3", "4,5,6,7"]
  assert {e["TPU_CHIPS_PER_PROCESS_BOUNDS"] for e in got} == {"2,2,1"}


def test_more_runs_than_tpu_chips_refused_in_one_line():
  with pytest.raises(errors.ConfigError, match="--parallel 4 or fewer"):
    devices.slot_env("tpu", ["0", "1", "2", "3"], 0, 5)
  with pytest.raises(errors.ConfigError, match="valid: cpu, cuda, rocm, tpu"):
    devices.slot_env("metal", ["0"], 0, 2)
  with pytest.raises(ValueError, match="slot 2"):
    devices.slot_env("cuda", ["0"], 2, 2)


def test_probe_on_this_machine():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  assert devices.probe(env) == ("cpu", [])
  env.pop("JAX_PLATFORMS")
  env.pop("XLA_FLAGS", None)
  platform, ids = devices.probe(env)
  assert platform in ("cpu", "cuda", "rocm", "tpu")
  if platform == "cpu":
    assert ids == []
