"""Exports a trained run for serving, and scores batches with the export.

`export_run(workdir, out_dir, platforms)` reads only the run's workdir (its
config, best checkpoint and the serving info it saved, `serving_info.py`;
never the data set) and writes:
  model.jax_export   `jax.export` serialisation (StableHLO) of the model's
                     eval-mode forward pass with the best-on-validation params
                     baked in, lowered for each of `platforms` ("cpu",
                     "cuda", "tpu"; default: this machine's); the batch
                     dimension is symbolic, so any batch size runs;
  signature.json     input columns (name, dtype, shape with -1 for the batch),
                     output names and kinds, the run it came from;
  example_inputs.npz 8 test rows in the input layout, and
  example_outputs.npz  the in-process model's outputs on them, so a serving
                     stack can check itself (`experiments.predict --check`);
  saved_model/       a TF SavedModel via jax2tf, only when TensorFlow is
                     installed (it is not a dependency).
`load(out_dir)` + `predict(exported, signature, inputs)` score a batch of
numpy columns; inputs are checked against the signature first (a missing
column, a wrong dtype or width stops with a message naming it).
"""
import os
from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax import paths
from mtkd_jax import serving_info
from mtkd_jax.accel import native
from mtkd_jax.distill import plugin as distill_plugin
from mtkd_jax.distill import teacher as teacher_lib
from mtkd_jax.train import model_stats

MODEL_FILE = "model.jax_export"
SIGNATURE_FILE = "signature.json"
EXAMPLE_INPUTS, EXAMPLE_OUTPUTS = "example_inputs.npz", "example_outputs.npz"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's lowering targets
is_input = serving_info.is_input


def serving_params(params):
  """The model's params without training-only subtrees (hint projector)."""
  return {k: v for k, v in params.items()
          if k not in model_stats.TRAINING_ONLY}


def check_platforms(platforms) -> Optional[Tuple[str, ...]]:
  """`platforms` as a tuple (None or empty: this machine's platform)."""
  if not platforms:
    return None
  platforms = tuple(platforms)
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown:
    raise errors.ConfigError(f"Unknown export platform(s) {unknown}; valid: "
                             f"{', '.join(PLATFORMS)}.")
  return platforms


def export_model(model, params, example_batch: Mapping[str, np.ndarray],
                 platforms=None):
  """(jax.export.Exported, input specs) of `model` in eval mode, lowered for
  `platforms` (None: this machine's)."""
  (batch_dim,) = jax.export.symbolic_shape("b")
  inputs = {k: np.asarray(v) for k, v in example_batch.items() if is_input(k)}
  specs = {k: jax.ShapeDtypeStruct((batch_dim,) + v.shape[1:], v.dtype)
           for k, v in inputs.items()}
  params = jax.tree.map(np.asarray, serving_params(params))

  def serve(batch):
    return model.apply({"params": params}, batch, train=False)[0]

  with native.off():  # the XLA forms: no kernel of this process in the module
    return jax.export.export(jax.jit(serve), platforms=check_platforms(
        platforms))(specs), inputs


def export_run(workdir: str, out_dir: str, platforms=None) -> Dict[str, str]:
  """Exports the best checkpoint of the run in `workdir` to `out_dir`, for
  `platforms` (e.g. ("cpu", "cuda", "tpu"); None: this machine's), from the
  workdir alone (no data set)."""
  config = teacher_lib.read_run_config(workdir)
  info = serving_info.load(workdir)
  model = distill_plugin.student_model(
      models.build_model(info.spec, config.model, info.extras), info.spec,
      config)
  params = teacher_lib.restore_params(workdir)
  exported, inputs = export_model(model, params, info.example_inputs,
                                  platforms)
  out = paths.path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / MODEL_FILE).write_bytes(exported.serialize())
  expected = jax.device_get(model.apply(
      {"params": serving_params(params)}, inputs, train=False)[0])
  signature = {
      "inputs": {k: {"dtype": str(v.dtype), "shape": [-1] + list(v.shape[1:])}
                 for k, v in inputs.items()},
      "outputs": {t.name: {"kind": t.kind} for t in info.spec.tasks},
      "run": str(paths.path(workdir)),
      "model": config.model.name,
      "platforms": list(exported.platforms),
  }
  paths.write_json(out / SIGNATURE_FILE, signature)
  paths.save_npz(out / EXAMPLE_INPUTS, inputs)
  paths.save_npz(out / EXAMPLE_OUTPUTS,
                 {k: np.asarray(v) for k, v in expected.items()})
  written = {"export": str(out / MODEL_FILE),
             "signature": str(out / SIGNATURE_FILE)}
  saved_model = _maybe_saved_model(model, params, inputs, out_dir)
  if saved_model:
    written["saved_model"] = saved_model
  return written


def _maybe_saved_model(model, params, inputs, out_dir):
  """A TF SavedModel via jax2tf when TensorFlow is installed, else None."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  params = serving_params(params)
  fn = jax2tf.convert(
      lambda b: model.apply({"params": params}, b, train=False)[0],
      polymorphic_shapes=[{k: "(b, ...)" for k in inputs}])
  module = tf.Module()
  module.f = tf.function(fn, autograph=False, input_signature=[
      {k: tf.TensorSpec((None,) + v.shape[1:], tf.as_dtype(v.dtype))
       for k, v in inputs.items()}])
  path = os.path.join(out_dir, "saved_model")
  with native.off():  # traced here: XLA forms only
    tf.saved_model.save(module, path)
  return path


def load(out_dir: str) -> Tuple[jax.export.Exported, dict]:
  """The deserialised export and its signature."""
  out = paths.path(out_dir)
  if not (out / MODEL_FILE).exists():
    raise errors.ConfigError(f"No export in {str(out_dir)!r} (missing "
                             f"{MODEL_FILE}); create one with python -m "
                             "experiments.export.")
  exported = jax.export.deserialize(bytearray((out / MODEL_FILE).read_bytes()))
  return exported, paths.read_json(out / SIGNATURE_FILE)


def check_inputs(signature: dict, inputs: Mapping[str, np.ndarray]) -> dict:
  """The inputs the export takes, cast-free; clear errors on a mismatch."""
  out, rows = {}, None
  for name, sig in signature["inputs"].items():
    if name not in inputs:
      raise errors.DataError(
          f"Input column {name!r} is missing; the export takes "
          f"{', '.join(signature['inputs'])}.")
    value = np.asarray(inputs[name])
    if str(value.dtype) != sig["dtype"]:
      raise errors.DataError(f"Input column {name!r} has dtype {value.dtype}; "
                             f"the export takes {sig['dtype']}.")
    if list(value.shape[1:]) != sig["shape"][1:]:
      raise errors.DataError(
          f"Input column {name!r} has shape {value.shape}; the export takes "
          f"(rows, {', '.join(map(str, sig['shape'][1:]))}).")
    if rows is not None and len(value) != rows:
      raise errors.DataError(f"Input column {name!r} has {len(value)} rows; "
                             f"the others have {rows}.")
    rows = len(value)
    out[name] = value
  return out


def predict(exported, signature: dict, inputs: Mapping[str, np.ndarray]
            ) -> Dict[str, np.ndarray]:
  """{task: outputs} of the exported model on a batch of numpy columns."""
  return {k: np.asarray(v) for k, v in
          exported.call(check_inputs(signature, inputs)).items()}


def predict_files(out_dir: str, inputs_path: Optional[str] = None,
                  preds_path: Optional[str] = None, check: bool = False
                  ) -> dict:
  """`experiments.predict`: scores the .npz `inputs_path` (default: the
  export's example inputs) with the export in `out_dir`, writes the
  predictions to `preds_path` (.npz, one array per task) if given; with
  `check`, compares with the outputs saved at export time. Any `paths`
  scheme. Returns the summary: rows, output shapes (and the check's max
  absolute difference)."""
  exported, signature = load(out_dir)
  inputs = paths.load_npz(paths.path(inputs_path) if inputs_path else
                          paths.path(out_dir) / EXAMPLE_INPUTS)
  preds = predict(exported, signature, inputs)
  if preds_path:
    paths.save_npz(paths.path(preds_path), preds)
  summary = {"rows": int(len(next(iter(inputs.values())))),
             "outputs": {k: list(v.shape) for k, v in preds.items()}}
  if check:
    expected = paths.load_npz(paths.path(out_dir) / EXAMPLE_OUTPUTS)
    summary["max_abs_diff_vs_in_process"] = max(
        float(np.max(np.abs(preds[k] - v))) for k, v in expected.items())
  return summary
