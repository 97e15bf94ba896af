// A table's row gradient made compact: the distinct rows a batch touches and
// each one's gradient summed over its lookups (`train.row_grads.compact`).
//
//   uniq[u]         = the u-th distinct id of all_ids below `fill`, in order
//                     of first occurrence; `fill` in the slots after them;
//   out[l, u, :]    = sum over i with ids[i] == uniq[u] of grads[l, i, :],
//                     added in increasing i onto +0,
//   ids             = all_ids[offset : offset + n] (this device's lookups).
//
// XLA:CPU computes this (`row_grads.unique_slots`'s "map" method, then a
// scatter-add) as a dozen small ops: a [fill + 1] int32 map filled and
// scatter-min'ed, a gather, a cumulative sum (reduce-window), scatters,
// zero fills, selects: ~0.5 ms of the PLE train step of the benchmark workload
// (26,624 lookups of a 260,000-row table; `python -m
// benchmarks.profile_step --model ple`). This makes one pass over the ids
// and one over the gradients. The scatter-add adds each lookup's gradient
// in index order onto zeros, as this does: the same floats.
//
// Inputs: all_ids int32[N_all] in [0, fill] (`fill` = no row); grads
// float32[L, n, d]; offset int32[] (0 <= offset <= N_all - n). Attribute:
// fill (the table's row count). Outputs: uniq int32[U], out float32[L, U, d]
// (U >= the number of distinct ids below fill).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error CompactRowsImpl(ffi::Buffer<ffi::S32> all_ids,
                           ffi::Buffer<ffi::F32> grads,
                           ffi::Buffer<ffi::S32> offset_buf,
                           ffi::ResultBuffer<ffi::S32> uniq_out,
                           ffi::ResultBuffer<ffi::F32> out, int64_t fill) {
  const auto gdims = grads.dimensions();
  const auto odims = out->dimensions();
  if (gdims.size() != 3 || odims.size() != 3 || gdims[0] != odims[0] ||
      gdims[2] != odims[2] || uniq_out->element_count() != odims[1] ||
      offset_buf.element_count() != 1 || fill < 0) {
    return ffi::Error::InvalidArgument(
        "compact_rows: want grads [L, n, d], out [L, U, d], uniq [U]");
  }
  const int64_t lead = gdims[0], n = gdims[1], d = gdims[2];
  const int64_t size = odims[1], n_all = all_ids.element_count();
  const int64_t offset = offset_buf.typed_data()[0];
  if (offset < 0 || offset + n > n_all) {
    return ffi::Error::InvalidArgument("compact_rows: offset out of range");
  }
  const int32_t* ids = all_ids.typed_data();
  int32_t* uniq = uniq_out->typed_data();
  // slot_of[r]: row r's slot, -1 until seen. Kept between calls (one per
  // thread) and reset on the rows this call saw: O(N) per call, not O(fill).
  thread_local std::vector<int32_t> slot_of;
  if (static_cast<int64_t>(slot_of.size()) < fill) slot_of.assign(fill, -1);
  int64_t count = 0;
  ffi::Error error = ffi::Error::Success();
  for (int64_t i = 0; i < n_all; ++i) {
    const int32_t r = ids[i];
    if (r < 0 || r > fill) {
      error = ffi::Error::InvalidArgument("compact_rows: id outside [0, fill]");
      break;
    }
    if (r == fill || slot_of[r] >= 0) continue;
    if (count == size) {
      error = ffi::Error::InvalidArgument("compact_rows: more distinct ids than U");
      break;
    }
    slot_of[r] = static_cast<int32_t>(count);
    uniq[count++] = r;
  }
  if (error.success()) {
    std::fill(uniq + count, uniq + size, static_cast<int32_t>(fill));
    float* o = out->typed_data();
    std::memset(o, 0, sizeof(float) * lead * size * d);
    const float* g = grads.typed_data();
    for (int64_t l = 0; l < lead; ++l) {
      for (int64_t i = 0; i < n; ++i) {
        const int32_t r = ids[offset + i];
        if (r == fill) continue;
        float* dst = o + (l * size + slot_of[r]) * d;
        const float* src = g + (l * n + i) * d;
        for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
      }
    }
  }
  for (int64_t u = 0; u < count; ++u) slot_of[uniq[u]] = -1;
  return error;
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MtkdCompactRows, CompactRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // all_ids
                                  .Arg<ffi::Buffer<ffi::F32>>()  // grads
                                  .Arg<ffi::Buffer<ffi::S32>>()  // offset
                                  .Ret<ffi::Buffer<ffi::S32>>()  // uniq
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Attr<int64_t>("fill"));
