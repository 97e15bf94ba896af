r"""Exports the best checkpoint of a finished run for serving.

  python -m experiments.export --workdir /tmp/mtkd/movielens_kd_student --out /tmp/mtkd/export

Reads only the workdir (config, best checkpoint, saved serving info), not the
data set. `--platforms=cpu,cuda,tpu` lowers one artefact for several
platforms (default: this machine's).
Writes <out>/model.jax_export (jax.export, params baked in, any batch size),
<out>/signature.json, example inputs/outputs, and a TF SavedModel when
TensorFlow is installed; see mtkd_jax/export.py. Score with
`python -m experiments.predict`.
"""
import json
import sys

from absl import app
from absl import flags
from absl import logging

from mtkd_jax import errors
from mtkd_jax import export
from mtkd_jax import logs

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's workdir.")
_OUT = flags.DEFINE_string("out", None, "Directory for the export.")
_PLATFORMS = flags.DEFINE_list(
    "platforms", [], "Platforms to lower for, of cpu, cuda, rocm, tpu "
    "(default: this machine's).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_orbax(logging.WARNING)
  try:
    written = export.export_run(_WORKDIR.value, _OUT.value,
                                _PLATFORMS.value or None)
  except errors.UserFacingError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(written))


if __name__ == "__main__":
  app.run(main)
