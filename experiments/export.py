r"""Exports the best checkpoint of a finished run for serving.

  python -m experiments.export --workdir /tmp/mtkd/movielens_kd_student --out /tmp/mtkd/export

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
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_orbax(logging.WARNING)
  try:
    written = export.export_run(_WORKDIR.value, _OUT.value)
  except errors.UserFacingError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(written))


if __name__ == "__main__":
  app.run(main)
