"""Checksums of saved checkpoints, and restore with fallback past damage.

After a save has committed, `write_manifest` records the sha256 of every
file of the step directory in `<step>/MANIFEST_FILE`; `verify` recomputes
them before a restore, so flipped bytes, truncated or missing files are
found before the state is trained on. `restore_newest` tries a manager's
steps newest first: a step that fails to verify or to restore is moved to
`<workdir>/damaged/<kind>-<step>` (kept for inspection, never deleted) with
one warning naming the step and why, and the next older step is tried.
"""
import hashlib
import json
from typing import Any, Callable, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils

from mtkd_jax import errors

MANIFEST_FILE = "mtkd_sha256.json"
_BLOCK = 1 << 20


def _sha256(path: epath.Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(_BLOCK), b""):
      h.update(block)
  return h.hexdigest()


def _files(directory: epath.Path):
  """Every file under `directory` but the manifest, in a fixed order."""
  out = []
  for p in sorted(directory.iterdir(), key=str):
    if p.is_dir():
      out.extend(_files(p))
    elif p.name != MANIFEST_FILE:
      out.append(p)
  return out


def write_manifest(step_dir) -> None:
  """Writes the sha256 of each file under a committed step directory."""
  step_dir = epath.Path(step_dir)
  sums = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
  tmp = step_dir / (MANIFEST_FILE + ".tmp")
  tmp.write_text(json.dumps(sums, indent=1, sort_keys=True))
  tmp.rename(step_dir / MANIFEST_FILE)


def verify(step_dir) -> Optional[str]:
  """None if every file matches the manifest, else what is wrong.

  A step without a manifest (killed between Orbax's commit and the
  manifest, or saved by older code) is not checked here; its restore still
  has to succeed.
  """
  step_dir = epath.Path(step_dir)
  manifest = step_dir / MANIFEST_FILE
  if not manifest.exists():
    return None
  try:
    expected = json.loads(manifest.read_text())
  except ValueError:
    return f"its checksum file {MANIFEST_FILE} is unreadable"
  for name, digest in sorted(expected.items()):
    path = step_dir / name
    if not path.exists():
      return f"file {name} is missing"
    if _sha256(path) != digest:
      return f"file {name} fails its sha256 checksum"
  return None


def tree_nbytes(tree) -> int:
  """Bytes of the arrays of a pytree (what a checkpoint of it writes)."""
  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def _set_aside(step_dir: epath.Path, workdir: epath.Path, kind: str) -> None:
  damaged = workdir / "damaged"
  damaged.mkdir(parents=True, exist_ok=True)
  target = damaged / f"{kind}-{step_dir.name}"
  n = 1
  while target.exists():
    target, n = damaged / f"{kind}-{step_dir.name}.{n}", n + 1
  step_dir.rename(target)


def restore_newest(manager, restore: Callable[[int], Any], workdir,
                   kind: str) -> Tuple[Optional[int], Any]:
  """(step, restore(step)) of the newest step that verifies and restores;
  (None, None) when the manager has no steps.

  Raises CheckpointError when there are steps but none restores.
  """
  workdir = epath.Path(workdir)
  reasons = []
  for step in sorted(manager.all_steps(), reverse=True):
    step_dir = epath.Path(manager.directory) / str(step)
    why = verify(step_dir)
    if why is None:
      try:
        return step, restore(step)
      except Exception as e:  # pylint: disable=broad-except
        lines = str(e).strip().splitlines() or [type(e).__name__]
        why = f"it does not restore ({type(e).__name__}: {lines[-1][:200]})"
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"skip-{kind}-{step}")
    if jax.process_index() == 0:
      _set_aside(step_dir, workdir, kind)
    logging.warning("Skipping damaged %s checkpoint step %d: %s; moved to "
                    "%s, trying the previous one.", kind, step, why,
                    workdir / "damaged")
    reasons.append(f"step {step}: {why}")
    manager.reload()
  if reasons:
    raise errors.CheckpointError(
        f"no {kind} checkpoint in {str(workdir)!r} restores ({'; '.join(reasons)}"
        f"); they are kept in {str(workdir / 'damaged')!r}. Start again with a "
        "new --workdir.")
  return None, None
