r"""The machine's float32 matrix-product speed in JAX, on the experts' shape.

  python -m benchmarks.gemm_ceiling [--shape 1024,429,2048] [--iters 20]

Prints one JSON line: GFLOP/s of a jitted [M, K] x [K, N] product (the
median over `--repeats` blocks of `--iters` products; the default shape is
the benchmark MMoE's first expert layer, batch 1024 by 429 inputs by 8 x 256
units). The CPU train step of that model is bound by this product
(docs/benchmarks.md, "Where the CPU step's time went"), so the figure tells
two machines apart where the CPU's name does not: `benchmarks.compare_peer`
records it in its run line, and a ratio to the peer is comparable only
between runs whose ceilings agree.
"""
import argparse
import json
import statistics
import sys
import time

SHAPE = (1024, 429, 2048)


def measure(shape=SHAPE, iters: int = 20, repeats: int = 5) -> dict:
  """{"shape", "gflops" (median), "gflops_all"} of a jitted matmul."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  m, k, n = shape
  a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
  product = jax.jit(jnp.matmul)
  product(a, b).block_until_ready()  # compile
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iters):
      out = product(a, b)
    out.block_until_ready()
    seconds = (time.perf_counter() - start) / iters
    rates.append(round(2 * m * k * n / seconds / 1e9, 1))
  return {"shape": list(shape), "gflops": statistics.median(rates),
          "gflops_all": rates, "backend": jax.default_backend()}


def parse_shape(text: str):
  parts = text.split(",")
  if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0
                                for p in parts):
    raise argparse.ArgumentTypeError(
        f"--shape takes M,K,N (three positive integers), got {text!r}")
  return tuple(int(p) for p in parts)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shape", type=parse_shape, default=SHAPE,
                 help="M,K,N (default %(default)s)")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  print(json.dumps({"kind": "gemm", **measure(args.shape, args.iters,
                                                args.repeats)}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
