"""Native CPU kernels, called from jitted code through the XLA FFI.

Four kernels, each described in its source's header:
  * `dense_adam.cc`: exact dense Adam for an embedding table from its row
    gradient in one pass over the table (`accel.row_optim.dense_adam`), and,
    as the kernel "adam", optax.adam on the other parameters in one call
    (`accel.row_optim.adam_update`);
  * `embedding_gather.cc`: the input layer's row gather and concatenation
    with the dense features in one pass (`gather_concat_vjp`, which
    `models.embedding.gather_concat` runs when it can);
  * `compact_rows.cc`: a table's distinct touched rows and their summed
    gradients (`accel.row_grads.compact`).

The source ships with the package and is compiled on first use with the
machine's C++ compiler (`$CXX`, else `c++`; ~2 s) for this CPU
(`-march=native`), into a cache directory (`$MTKD_JAX_CACHE_DIR`, else
`$XDG_CACHE_HOME/mtkd_jax`, else `~/.cache/mtkd_jax`), keyed by the source,
the compiler, the flags, jaxlib's version and the CPU's flags. Without a
compiler, or with `MTKD_JAX_NATIVE=0`, `available()` is False and callers
use their XLA form, which computes the same values (a warning says why).
Code traced under `with off():` uses none (`train.accel="off"`; a model
exported for serving must not call this process's kernels).
"""
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

KERNELS = ("dense_adam", "gather_concat", "adam", "compact_rows")
DENSE_ADAM = "mtkd_dense_adam"  # the FFI targets
ADAM = "mtkd_adam"
GATHER_CONCAT = "mtkd_gather_concat"
COMPACT_ROWS = "mtkd_compact_rows"
_SOURCES = tuple(pathlib.Path(__file__).with_name(name)
                 for name in ("dense_adam.cc", "embedding_gather.cc",
                              "compact_rows.cc"))
_HEADERS = (pathlib.Path(__file__).with_name("run_chunks.h"),)
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off",
          "-shared", "-fPIC", "-std=c++17")


def cache_dir() -> pathlib.Path:
  if os.environ.get("MTKD_JAX_CACHE_DIR"):
    return pathlib.Path(os.environ["MTKD_JAX_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "mtkd_jax"


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((l for l in f if l.startswith("flags")), "")
  except OSError:
    return ""


def _build() -> pathlib.Path:
  """Compiles the kernels (once per machine and version); the library path."""
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  if compiler is None:
    raise OSError("no C++ compiler ($CXX or c++) on the PATH")
  version = subprocess.run([compiler, "--version"], capture_output=True,
                           text=True, check=True).stdout
  key = hashlib.sha256("\0".join([
      *(src.read_text() for src in _SOURCES + _HEADERS), compiler, version, " ".join(_FLAGS),
      jaxlib.__version__, _cpu_flags()]).encode()).hexdigest()[:20]
  out = cache_dir() / f"native-{key}" / "libmtkd_native.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Compile to a temporary name, then rename: concurrent builds are safe.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    proc = subprocess.run(
        [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}",
         *map(str, _SOURCES), "-o", tmp], capture_output=True, text=True)
    if proc.returncode:
      raise OSError(f"{compiler} failed on the native kernels:\n"
                    f"{proc.stderr[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return out


@functools.lru_cache(maxsize=None)
def _register(path: str) -> None:  # once per library and process
  lib = ctypes.cdll.LoadLibrary(path)
  jax.ffi.register_ffi_target(DENSE_ADAM, jax.ffi.pycapsule(lib.MtkdDenseAdam),
                              platform="cpu")
  jax.ffi.register_ffi_target(ADAM, jax.ffi.pycapsule(lib.MtkdAdam),
                              platform="cpu")
  jax.ffi.register_ffi_target(COMPACT_ROWS,
                              jax.ffi.pycapsule(lib.MtkdCompactRows),
                              platform="cpu")
  jax.ffi.register_ffi_target(GATHER_CONCAT,
                              jax.ffi.pycapsule(lib.MtkdGatherConcat),
                              platform="cpu")


def _selected() -> bool:
  """Whether `$MTKD_JAX_NATIVE` (0 or 1, default 1) lets callers use them."""
  value = os.environ.get("MTKD_JAX_NATIVE", "1").strip()
  if value not in ("", "0", "1"):
    raise ValueError(f"MTKD_JAX_NATIVE must be 0 or 1, got {value!r}.")
  return value != "0"


_switched_off = threading.local()


@contextlib.contextmanager
def off():
  """Within it (in this thread), `use` is False: callers trace XLA forms."""
  depth = getattr(_switched_off, "depth", 0)
  _switched_off.depth = depth + 1
  try:
    yield
  finally:
    _switched_off.depth = depth


def use(kernel: str) -> bool:
  """Whether callers may run `kernel` (selected, built and registered, and
  not under `off()`)."""
  if kernel not in KERNELS:
    raise ValueError(f"unknown native kernel {kernel!r}; known: "
                     f"{', '.join(KERNELS)}")
  if getattr(_switched_off, "depth", 0):
    return False
  return _selected() and available()


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the kernels are built and registered for the CPU platform."""
  if not _selected():
    return False
  try:
    _register(str(_build()))
  except (OSError, subprocess.SubprocessError) as e:
    logging.warning("mtkd_jax native kernels unavailable (%s); using the XLA "
                    "forms, which compute the same values more slowly.", e)
    return False
  return True


def dense_adam(table, mu, nu, ids, grads, scalars, *, b1, b2, eps):
  """(table, mu, nu) after one exact dense Adam step (dense_adam.cc).

  Args:
    table, mu, nu: float32[rows, d].
    ids: int32[U], distinct; ids outside [0, rows) are padding.
    grads: float32[U, d], the gradient of rows `ids` (zero elsewhere).
    scalars: float32[3]: 1 / (1 - b1^t), 1 / (1 - b2^t), the learning rate.
    b1, b2, eps: Adam's (Python floats).
  The outputs alias the table, mu and nu: in place when they are donated.
  """
  f32 = np.float32  # the kernel's attributes are float32
  out = jax.ShapeDtypeStruct(table.shape, table.dtype)
  return tuple(jax.ffi.ffi_call(
      DENSE_ADAM, (out, out, out), input_output_aliases={0: 0, 1: 1, 2: 2},
      vmap_method="sequential")(
          table, mu, nu, ids, grads, scalars, b1=f32(b1), b2=f32(b2),
          one_minus_b1=f32(1 - b1), one_minus_b2=f32(1 - b2), eps=f32(eps)))


def adam(params, mu, nu, grads, scalars, *, b1, b2, eps):
  """(params, mu, nu) after one optax.adam step on each array (dense_adam.cc's
  `AdamImpl`), all in one call.

  Args:
    params, mu, nu, grads: lists of float32 arrays, entry i of each alike.
    scalars: float32[3]: 1 / (1 - b1^t), 1 / (1 - b2^t), the learning rate.
    b1, b2, eps: Adam's (Python floats).
  The outputs alias params, mu and nu: in place when they are donated.
  """
  f32 = np.float32
  args, outs, aliases = [scalars], [], {}
  for i, arrays in enumerate(zip(params, mu, nu, grads)):
    args.extend(arrays)
    for j in range(3):
      aliases[1 + 4 * i + j] = 3 * i + j
      outs.append(jax.ShapeDtypeStruct(arrays[j].shape, arrays[j].dtype))
  flat = jax.ffi.ffi_call(ADAM, outs, input_output_aliases=aliases,
                          vmap_method="sequential")(
      *args, b1=f32(b1), b2=f32(b2), one_minus_b1=f32(1 - b1),
      one_minus_b2=f32(1 - b2), eps=f32(eps))
  return list(flat[0::3]), list(flat[1::3]), list(flat[2::3])


def gather_concat(table, ids, dense, pert=None):
  """`concat(take(table, ids, mode="clip") (+ pert), dense)`, rows flattened
  (embedding_gather.cc; not differentiable: see
  `models.embedding.gather_concat`).

  Args:
    table: float32[rows, d].
    ids: int32[B, F].
    dense: float32[B, D], D >= 0.
    pert: None or float32[B, F, d], added to the gathered rows.
  Returns:
    float32[B, F * d + D].
  """
  batch, fields = ids.shape
  if pert is None:
    pert = jnp.zeros((0,), jnp.float32)
  out = jax.ShapeDtypeStruct((batch, fields * table.shape[1] + dense.shape[1]),
                             jnp.float32)
  return jax.ffi.ffi_call(GATHER_CONCAT, out, vmap_method="sequential")(
      table, ids, dense, pert)


def compact_rows(all_ids, grads, offset, size: int, fill: int):
  """(uniq int32[U], summed float32[L, U, d]) (compact_rows.cc).

  Args:
    all_ids: int32[N_all] in [0, fill]; `fill` marks a lookup of no row.
    grads: float32[L, n, d], the gradients of lookups
      all_ids[offset : offset + n].
    offset: int32 scalar.
    size: U, at least the number of distinct ids below `fill`.
    fill: the table's row count.
  Returns:
    uniq: the distinct ids below `fill` in order of first occurrence, then
      `fill`; summed[l, u]: the sum of grads[l, i] over the lookups i of row
      uniq[u], added in order onto zeros.
  """
  lead, _, dim = grads.shape
  outs = (jax.ShapeDtypeStruct((size,), jnp.int32),
          jax.ShapeDtypeStruct((lead, size, dim), jnp.float32))
  return jax.ffi.ffi_call(COMPACT_ROWS, outs, vmap_method="sequential")(
      all_ids, grads, jnp.asarray(offset, jnp.int32), fill=np.int64(fill))


def gather_fits(table, dense, pert) -> bool:
  """Whether `gather_concat_vjp` can run on these arrays (float32 on CPU,
  kernels allowed)."""
  return (jax.default_backend() == "cpu" and
          all(x.dtype == jnp.float32 for x in (table, dense)) and
          (pert is None or pert.dtype == jnp.float32) and
          use("gather_concat"))


@jax.custom_vjp
def gather_concat_vjp(table, ids, dense, pert=None):
  """`gather_concat` with take's gradients (a scatter-add into the table,
  the identity to `dense` and `pert`), as `models.embedding.gather_concat`'s
  XLA form; the same values bit for bit (tests/accel/)."""
  return gather_concat(table, ids.astype(jnp.int32), dense, pert)


def _gather_concat_fwd(table, ids, dense, pert=None):
  # pert rides along only to say whether it was given (None or an array)
  return gather_concat_vjp(table, ids, dense, pert), (table, ids, pert)


def _gather_concat_bwd(res, ct):
  table, ids, pert = res
  (batch, fields), d = ids.shape, table.shape[1]
  ct_rows = ct[:, :fields * d].reshape(batch, fields, d)
  # take's transpose: a scatter-add at the clamped ids. Unused (and dropped
  # by XLA) when the step differentiates w.r.t. the rows, not the table.
  d_table = jnp.zeros_like(table).at[jnp.clip(ids, 0, table.shape[0] - 1)].add(
      ct_rows.astype(table.dtype))
  return (d_table, np.zeros(ids.shape, jax.dtypes.float0), ct[:, fields * d:],
          None if pert is None else ct_rows.astype(pert.dtype))


gather_concat_vjp.defvjp(_gather_concat_fwd, _gather_concat_bwd)
