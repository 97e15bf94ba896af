r"""Scores a batch with an exported model (experiments.export).

  python -m experiments.predict --export /tmp/mtkd/export --check
  python -m experiments.predict --export /tmp/mtkd/export --inputs rows.npz --out preds.npz

`--inputs` is an .npz of input columns in the layout of signature.json
(default: the export's example_inputs.npz); predictions go to `--out` (.npz,
one array per task) and a summary line (JSON) to stdout. `--check` compares
the export's outputs on its example inputs with the in-process model's
outputs saved at export time and exits 1 if they differ. Every path may be
local or a gs:// etc. URL, as `--workdir` (`export.predict_files`).
"""
import json
import sys

from absl import app
from absl import flags

from mtkd_jax import errors
from mtkd_jax import export

_EXPORT = flags.DEFINE_string("export", None, "Export directory.")
_INPUTS = flags.DEFINE_string("inputs", None, "An .npz of input columns.")
_OUT = flags.DEFINE_string("out", None, "Where to write predictions (.npz).")
_CHECK = flags.DEFINE_bool("check", False, "Compare with the saved outputs.")
flags.mark_flags_as_required(["export"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    summary = export.predict_files(_EXPORT.value, _INPUTS.value, _OUT.value,
                                   _CHECK.value)
  except errors.UserFacingError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(summary))
  if _CHECK.value and not summary["max_abs_diff_vs_in_process"] <= 1e-5:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
