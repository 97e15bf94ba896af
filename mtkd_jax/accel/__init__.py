"""CPU speed work behind one switch: `train.accel` ("off", "on", "auto").

"off" (the default) runs plain optax and XLA on every backend; "auto" is
"on" on the CPU backend only. On, a run gets:
  * the default Adam's embedding tables updated from their row gradients
    (`row_optim.dense_adam`: optax.adam's update without a dense table
    gradient) and the step's row-gradient path (`row_grads`);
  * native CPU kernels (`native/`: the input layer's gather, the tables'
    Adam, the other params' Adam in one call, the row gradients' compaction);
  * glibc's allocator kept from returning each step's large temporaries to
    the OS (`host_memory`).
Every one computes the same values as the plain path (optax, XLA), up to
float rounding (tests/accel/). Off, a run is plain optax and XLA, as on a
GPU or TPU.

The row-sparse embedding optimizers (`optimizer.embedding`: row_adagrad,
lazy_adam) are other optimizers, not speed work: they are used whenever a
config names them, and share this package's row machinery.
"""
