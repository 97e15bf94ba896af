// Exact dense Adam for an embedding table from its row gradient, in one pass.
//
// The XLA:CPU form of `row_optim.dense_adam_update` (b1 m and b2 v over the
// whole table, the batch's rows scattered in, then the weight update) makes
// three passes over three table-sized arrays: ~133 MB per step for the
// 16.6 MB tables of BENCHMARK.md, 3.9 ms of a traced step on 2 cores
// (`MTKD_JAX_NATIVE=0 python -m benchmarks.profile_step`). This kernel reads
// w, m and v once and writes them once, in place (the outputs alias the
// inputs), with the same float operations in the same order and the same
// roundings (no FMA contraction, except the one XLA makes: w + u * -lr):
// w, m and v equal XLA's bit for bit (tests/train/test_row_optim.py).
// 2.3 ms in the same trace; the step is 2.2 ms shorter (benchmarks.step_ab).
//
// Inputs: w, m, v float32[rows, d]; ids int32[U] (distinct; an id outside
// [0, rows) is padding and is skipped); g float32[U, d] (row ids[k]'s
// gradient is g[k]); scalars float32[3] = (1 / (1 - b1^t), 1 / (1 - b2^t),
// lr): XLA turns m / (1 - b1^t) into m * (1 / (1 - b1^t)), and so does this.
// Attributes: b1, b2, one_minus_b1, one_minus_b2 (rounded from double, as
// JAX rounds Python's 1 - b1), eps. Outputs: the new w, m, v.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "run_chunks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Consts {
  float b1, b2, ob1, ob2, r1, r2, lr, eps;  // r1 = 1 / (1 - b1^t), r2 likewise
};

// Rows outside the batch: g = 0, so (1 - b1) g and (1 - b2) g^2 are +0 and
// b1 m + 0 = b1 m exactly (XLA's scatter-add adds nothing to them either).
inline void DecayOnly(float* __restrict w, float* __restrict m,
                      float* __restrict v, int64_t n, const Consts& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float mi = k.b1 * m[i];
    const float vi = k.b2 * v[i];
    m[i] = mi;
    v[i] = vi;
    w[i] = std::fma((mi * k.r1) / (std::sqrt(vi * k.r2) + k.eps), -k.lr, w[i]);
  }
}

inline void WithGrad(float* __restrict w, float* __restrict m,
                     float* __restrict v, const float* __restrict g,
                     int64_t n, const Consts& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float mi = k.b1 * m[i] + k.ob1 * g[i];
    const float vi = k.b2 * v[i] + k.ob2 * (g[i] * g[i]);
    m[i] = mi;
    v[i] = vi;
    w[i] = std::fma((mi * k.r1) / (std::sqrt(vi * k.r2) + k.eps), -k.lr, w[i]);
  }
}

struct Work {
  float *w, *m, *v;
  const float* g;
  std::vector<int32_t> slot;  // row -> its index in g, or -1
  int64_t rows, d, chunk_rows;
  Consts k;

  void Chunk(int64_t c) {
    const int64_t r0 = c * chunk_rows, r1 = std::min(rows, r0 + chunk_rows);
    int64_t run = r0;  // the first row of the current run outside the batch
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t s = slot[r];
      if (s < 0) continue;
      if (r > run) DecayOnly(w + run * d, m + run * d, v + run * d,
                             (r - run) * d, k);
      WithGrad(w + r * d, m + r * d, v + r * d, g + int64_t{s} * d, d, k);
      run = r + 1;
    }
    if (r1 > run) DecayOnly(w + run * d, m + run * d, v + run * d,
                            (r1 - run) * d, k);
  }
};

ffi::Error DenseAdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w,
                         ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> v,
                         ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::F32> g,
                         ffi::Buffer<ffi::F32> scalars,
                         ffi::ResultBuffer<ffi::F32> w_out,
                         ffi::ResultBuffer<ffi::F32> m_out,
                         ffi::ResultBuffer<ffi::F32> v_out, float b1, float b2,
                         float one_minus_b1, float one_minus_b2, float eps) {
  const auto dims = w.dimensions();
  auto same = [&dims](auto other) {
    return other.size() == dims.size() &&
           std::equal(dims.begin(), dims.end(), other.begin());
  };
  if (dims.size() != 2 || !same(m.dimensions()) || !same(v.dimensions())) {
    return ffi::Error::InvalidArgument("w, m and v must be [rows, d] alike");
  }
  const int64_t rows = dims[0], d = dims[1], u = ids.element_count();
  if (g.element_count() != u * d || scalars.element_count() != 3) {
    return ffi::Error::InvalidArgument("g must be [U, d]; scalars [3]");
  }
  Work work;
  const float* sc = scalars.typed_data();
  work.k = Consts{b1, b2, one_minus_b1, one_minus_b2, sc[0], sc[1], sc[2], eps};
  work.w = w_out->typed_data();
  work.m = m_out->typed_data();
  work.v = v_out->typed_data();
  if (work.w != w.typed_data() || work.m != m.typed_data() ||
      work.v != v.typed_data()) {  // not aliased: start from the inputs
    std::copy_n(w.typed_data(), rows * d, work.w);
    std::copy_n(m.typed_data(), rows * d, work.m);
    std::copy_n(v.typed_data(), rows * d, work.v);
  }
  work.g = g.typed_data();
  work.rows = rows;
  work.d = d;
  work.slot.assign(rows, -1);
  const int32_t* id = ids.typed_data();
  for (int64_t k = 0; k < u; ++k) {
    const int32_t r = id[k];
    if (r < 0 || r >= rows) continue;  // padding
    if (work.slot[r] >= 0) {
      return ffi::Error::InvalidArgument("dense_adam: duplicate row id");
    }
    work.slot[r] = static_cast<int32_t>(k);
  }
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t chunks =
      std::max<int64_t>(1, std::min<int64_t>(8 * threads, rows));
  work.chunk_rows = (rows + chunks - 1) / chunks;
  mtkd_native::RunChunks(pool, chunks, [&work](int64_t c) { work.Chunk(c); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MtkdDenseAdam, DenseAdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // ids
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scalars
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("one_minus_b1")
                                  .Attr<float>("one_minus_b2")
                                  .Attr<float>("eps"));
