r"""S seeds one after another vs one vmapped program (train/multiseed.py).

  python -m benchmarks.vmap_seeds [--config configs/mmoe_synthetic.py] \
      [--seeds 4] [--quick]

Prints one JSON line: the wall time of S sequential
`loop.train_and_evaluate` runs (each compiles its own step and writes its
Orbax checkpoints, as a sweep would run them) and of one
`multiseed.train_and_evaluate_seeds` run over the same S seeds (one compile,
no checkpoints), the speed-up, and the largest relative difference of any
test metric between the two. Both include data loading and compilation; one
throw-away JAX op runs first so backend start-up counts for neither.
Everything else (logs, progress bars) goes to stderr. `--quick` uses the
config's `:smoke` variant (seconds).
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/mmoe_synthetic.py")
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)

  with contextlib.redirect_stdout(sys.stderr):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from absl import logging  # pylint: disable=g-import-not-at-top
    from mtkd_jax import sweeps  # pylint: disable=g-import-not-at-top
    from mtkd_jax.train import loop  # pylint: disable=g-import-not-at-top
    from mtkd_jax.train import multiseed  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    path = os.path.join(REPO_ROOT, args.config) if not os.path.isabs(
        args.config) else args.config
    config = sweeps.load_config(path + (":smoke" if args.quick else ""))
    config.train.tensorboard = False
    seeds = list(range(args.seeds))
    jax.block_until_ready(jnp.ones(()) + 1)

    with tempfile.TemporaryDirectory() as tmp:
      t0 = time.perf_counter()
      sequential = []
      for s in seeds:
        c = sweeps.apply_overrides(config, {"seed": s})
        sequential.append(loop.train_and_evaluate(c, os.path.join(tmp, f"s{s}")))
      sequential_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      vmapped = multiseed.train_and_evaluate_seeds(
          config, os.path.join(tmp, "vmap"), seeds)
      vmapped_s = time.perf_counter() - t0

  diff = max(abs(a["test"][k] - b["test"][k]) / max(abs(a["test"][k]), 1e-12)
             for a, b in zip(sequential, vmapped) for k in a["test"])
  line = {"benchmark": "vmap_seeds",
          "config": args.config + (":smoke" if args.quick else ""),
          "seeds": len(seeds), "steps": sequential[0]["steps"],
          "devices": jax.device_count(), "backend": jax.default_backend(),
          "sequential_s": round(sequential_s, 2),
          "vmapped_s": round(vmapped_s, 2),
          "speedup": round(sequential_s / vmapped_s, 2),
          "max_rel_test_diff": float(f"{diff:.3g}"),
          "loadavg_1m": round(os.getloadavg()[0], 2)}
  print(json.dumps(line), flush=True)
  return line


if __name__ == "__main__":
  main()
