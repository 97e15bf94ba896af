// The input layer's gather and concatenate in one pass:
//
//   out[b] = concat(table[ids[b, 0]] (+ pert[b, 0]), ...,
//                   table[ids[b, F-1]] (+ pert[b, F-1]), dense[b])
//
// XLA:CPU runs `jnp.take(table, ids, mode="clip")` as a loop fusion that
// copies element by element and then concatenates the dense features in a
// second pass: 2.3 ms + 0.8 ms of the Shared-Bottom eval step at batch 4096
// of the benchmark workload (106,496 rows of 16 floats from a 260,000-row table;
// `python -m benchmarks.profile_step --model shared_bottom --eval`). This
// copies each row once, straight into its place in the model's input, on the
// pool's threads (run_chunks.h).
//
// Inputs: table float32[rows, d]; ids int32[B, F] (clamped to [0, rows), as
// mode="clip"); dense float32[B, D] (D may be 0); pert float32[B, F, d] or
// float32[0]: when present it is added to the gathered rows (row gradients
// differentiate w.r.t. it; it holds zeros). Output float32[B, F * d + D].
// Copies and one float add per element: the values equal XLA's bit for bit.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "run_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunkExamples = 64;
constexpr int64_t kPrefetchAhead = 8;  // rows

struct GatherWork {
  const float* table;
  const int32_t* ids;
  const float* dense;
  const float* pert;  // nullptr: none
  float* out;
  int64_t rows, d, fields, dense_width, batch;

  const float* Row(int64_t k) const {
    const int64_t r = std::clamp<int64_t>(ids[k], 0, rows - 1);
    return table + r * d;
  }

  void Chunk(int64_t c) {
    const int64_t b0 = c * kChunkExamples;
    const int64_t b1 = std::min(batch, b0 + kChunkExamples);
    const int64_t width = fields * d + dense_width;
    const int64_t k_end = b1 * fields;
    for (int64_t b = b0; b < b1; ++b) {
      float* dst = out + b * width;
      for (int64_t f = 0; f < fields; ++f, dst += d) {
        const int64_t k = b * fields + f;
        if (k + kPrefetchAhead < k_end) {
          __builtin_prefetch(Row(k + kPrefetchAhead));
        }
        const float* src = Row(k);
        if (pert == nullptr) {
          std::memcpy(dst, src, sizeof(float) * d);
        } else {
          const float* p = pert + k * d;
          for (int64_t j = 0; j < d; ++j) dst[j] = src[j] + p[j];
        }
      }
      if (dense_width > 0) {
        std::memcpy(dst, dense + b * dense_width, sizeof(float) * dense_width);
      }
    }
  }
};

ffi::Error GatherConcatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> table,
                            ffi::Buffer<ffi::S32> ids,
                            ffi::Buffer<ffi::F32> dense,
                            ffi::Buffer<ffi::F32> pert,
                            ffi::ResultBuffer<ffi::F32> out) {
  const auto td = table.dimensions();
  const auto id = ids.dimensions();
  const auto dd = dense.dimensions();
  if (td.size() != 2 || id.size() != 2 || dd.size() != 2 || dd[0] != id[0]) {
    return ffi::Error::InvalidArgument(
        "gather_concat: table [rows, d], ids [B, F], dense [B, D]");
  }
  if (td[0] < 1) {
    return ffi::Error::InvalidArgument("gather_concat: empty table");
  }
  GatherWork work;
  work.rows = td[0];
  work.d = td[1];
  work.batch = id[0];
  work.fields = id[1];
  work.dense_width = dd[1];
  const int64_t n_rows = work.batch * work.fields;
  if (pert.element_count() != 0 && pert.element_count() != n_rows * work.d) {
    return ffi::Error::InvalidArgument("gather_concat: pert [B, F, d] or [0]");
  }
  if (out->element_count() !=
      work.batch * (work.fields * work.d + work.dense_width)) {
    return ffi::Error::InvalidArgument("gather_concat: out [B, F * d + D]");
  }
  work.table = table.typed_data();
  work.ids = ids.typed_data();
  work.dense = dense.typed_data();
  work.pert = pert.element_count() ? pert.typed_data() : nullptr;
  work.out = out->typed_data();
  const int64_t chunks = (work.batch + kChunkExamples - 1) / kChunkExamples;
  mtkd_native::RunChunks(pool, chunks, [&work](int64_t c) { work.Chunk(c); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MtkdGatherConcat, GatherConcatImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // table
                                  .Arg<ffi::Buffer<ffi::S32>>()  // ids
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dense
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pert
                                  .Ret<ffi::Buffer<ffi::F32>>());
