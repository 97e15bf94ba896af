"""Host allocator settings for the training step.

XLA:CPU allocates every temporary buffer of a step with `malloc` and frees
it at the end. glibc serves large requests with a fresh `mmap` (and returns
freed heap tops to the OS), so each step's multi-megabyte temporaries
(embedding-table-sized gradients, optimizer moments) are page-faulted in
anew: on the benchmark MMoE step (docs/benchmarks.md) that was 12-15 of ~78 ms (a zero fill
of a 16.6 MB gradient took 11 ms instead of ~1). Keeping freed memory in
the heap for reuse removes it; peak RSS (the high-water mark) is what it
was, as the same buffers are live at the peak either way, provided the
memory freed by one-off work (data loading, XLA compilation: ~200 MB for
the MMoE step) is handed back to the OS once it is done
(`release_freed_memory`), so later phases do not stack on it.
"""
import ctypes
import sys

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 30  # requests above this still get their own mmap
TRIM_THRESHOLD_BYTES = 2**31 - 1  # never give the heap top back to the OS
# One malloc arena for all threads: with one per XLA thread, each kept its
# own copies of the step's freed temporaries (MMoE: +140 MB RSS over 800
# steps, and step times wandering 46-61 ms; one arena: 48.2 +- 0.3 ms).
ARENAS = 1


def reuse_freed_memory() -> bool:
  """Tells glibc malloc to keep freed large buffers for reuse, in one arena.

  Affects the whole process from the call on (call it before the first
  computation, so XLA's threads join the one arena); a no-op (returns
  False) off Linux/glibc.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) and
                libc.mallopt(_M_ARENA_MAX, ARENAS))
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False


def release_freed_memory() -> bool:
  """Returns the heap's free memory to the OS (`malloc_trim(0)`).

  Call after one-off work whose freed memory should not stay resident: data
  loading, the first (compiling) train step. A no-op off Linux/glibc.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
  except (OSError, AttributeError):
    return False
