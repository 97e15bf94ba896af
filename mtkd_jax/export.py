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
import json
import os
from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from mtkd_jax import errors
from mtkd_jax import models
from mtkd_jax import serving_info
from mtkd_jax.accel import native
from mtkd_jax.distill import plugin as distill_plugin
from mtkd_jax.distill import teacher as teacher_lib
from mtkd_jax.train import model_stats

MODEL_FILE = "model.jax_export"
SIGNATURE_FILE = "signature.json"
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
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, MODEL_FILE), "wb") as f:
    f.write(exported.serialize())
  expected = jax.device_get(model.apply(
      {"params": serving_params(params)}, inputs, train=False)[0])
  signature = {
      "inputs": {k: {"dtype": str(v.dtype), "shape": [-1] + list(v.shape[1:])}
                 for k, v in inputs.items()},
      "outputs": {t.name: {"kind": t.kind} for t in info.spec.tasks},
      "run": os.path.abspath(workdir),
      "model": config.model.name,
      "platforms": list(exported.platforms),
  }
  with open(os.path.join(out_dir, SIGNATURE_FILE), "w") as f:
    json.dump(signature, f, indent=2)
  np.savez(os.path.join(out_dir, "example_inputs.npz"), **inputs)
  np.savez(os.path.join(out_dir, "example_outputs.npz"),
           **{k: np.asarray(v) for k, v in expected.items()})
  written = {"export": os.path.join(out_dir, MODEL_FILE),
             "signature": os.path.join(out_dir, SIGNATURE_FILE)}
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
  path = os.path.join(out_dir, MODEL_FILE)
  if not os.path.exists(path):
    raise errors.ConfigError(f"No export in {out_dir!r} (missing {MODEL_FILE}); "
                             "create one with python -m experiments.export.")
  with open(path, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with open(os.path.join(out_dir, SIGNATURE_FILE)) as f:
    return exported, json.load(f)


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
