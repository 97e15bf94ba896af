// Exact dense Adam for an embedding table from its row gradient, in one pass;
// and (`MtkdAdam`, at the end) optax.adam on the model's other parameters,
// every array in one call.
//
// The XLA:CPU form of `row_optim.dense_adam_update` (b1 m and b2 v over the
// whole table, the batch's rows scattered in, then the weight update) makes
// three passes over three table-sized arrays: ~133 MB per step for the
// 16.6 MB tables of the benchmark workload, 3.9 ms of a traced step on 2 cores
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
//
// `MtkdAdam`: the other parameters' update (1.17 M floats in 10 arrays for
// the benchmark workload's MMoE / PLE). XLA updates each array in its own fusion,
// split in two halves over the pool: ~1.3 ms of op time in a traced PLE
// step; this cuts every array into chunks claimed by the pool's threads
// (0.6 ms; the step 0.3 ms shorter: `python -m benchmarks.step_ab --model
// ple --variants base,native=dense_adam:gather_concat:compact_rows`). Its
// floats are those XLA gives optax.adam where it fuses the update as
// written (`DenseGrad`); XLA rewrites (m / c1) / (sqrt(v / c2) + eps) into
// m / (c1 (sqrt(v / c2) + eps)) in some programs, so optax's own floats
// vary with the program around it, by an ulp of the update.
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

// A dense gradient (the model's other parameters, `row_optim.adam_update`):
// optax.adam's floats as XLA computes them. There XLA contracts
// (1 - b1) g + b1 m and (1 - b2) g^2 + b2 v into one rounding each (an FMA
// whose addend is b1 m, resp. b2 v), where the row form above rounds the
// scatter-added product separately.
inline void DenseGrad(float* __restrict w, float* __restrict m,
                      float* __restrict v, const float* __restrict g,
                      int64_t n, const Consts& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float mi = std::fma(k.ob1, g[i], k.b1 * m[i]);
    const float vi = std::fma(k.ob2, g[i] * g[i], k.b2 * v[i]);
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

namespace {

// Adam on L arrays with dense gradients in one call: args (w, m, v, g) per
// array, rets (w, m, v) per array (aliasing the args), the same scalars and
// attributes as above. The arrays are cut into chunks of at most kChunk
// elements, claimed by the pool's threads.
constexpr int64_t kChunk = 16384;

ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                    ffi::RemainingArgs args, ffi::RemainingRets rets,
                    float b1, float b2, float one_minus_b1,
                    float one_minus_b2, float eps) {
  if (args.size() % 4 != 0 || rets.size() * 4 != args.size() * 3 ||
      scalars.element_count() != 3) {
    return ffi::Error::InvalidArgument(
        "adam: want (w, m, v, g) per array, (w, m, v) out, scalars [3]");
  }
  struct Slice {
    float *w, *m, *v;
    const float* g;
    int64_t n;
  };
  std::vector<Slice> slices;
  for (size_t a = 0; a < args.size() / 4; ++a) {
    ffi::Buffer<ffi::F32> in[4] = {
        args.get<ffi::Buffer<ffi::F32>>(4 * a).value(),
        args.get<ffi::Buffer<ffi::F32>>(4 * a + 1).value(),
        args.get<ffi::Buffer<ffi::F32>>(4 * a + 2).value(),
        args.get<ffi::Buffer<ffi::F32>>(4 * a + 3).value()};
    const int64_t n = in[0].element_count();
    float* out[3];
    for (int j = 0; j < 3; ++j) {
      auto r = rets.get<ffi::Buffer<ffi::F32>>(3 * a + j);
      if (!r.has_value() || in[j].element_count() != n ||
          (*r)->element_count() != n) {
        return ffi::Error::InvalidArgument("adam: w, m, v, g must be alike");
      }
      out[j] = (*r)->typed_data();
      if (out[j] != in[j].typed_data()) {  // not aliased: start from the input
        std::copy_n(in[j].typed_data(), n, out[j]);
      }
    }
    if (in[3].element_count() != n) {
      return ffi::Error::InvalidArgument("adam: w, m, v, g must be alike");
    }
    for (int64_t i = 0; i < n; i += kChunk) {
      slices.push_back({out[0] + i, out[1] + i, out[2] + i,
                        in[3].typed_data() + i, std::min(kChunk, n - i)});
    }
  }
  const float* sc = scalars.typed_data();
  const Consts k{b1, b2, one_minus_b1, one_minus_b2, sc[0], sc[1], sc[2], eps};
  mtkd_native::RunChunks(pool, static_cast<int64_t>(slices.size()),
                         [&slices, &k](int64_t c) {
                           const Slice& s = slices[c];
                           DenseGrad(s.w, s.m, s.v, s.g, s.n, k);
                         });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MtkdAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scalars
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("one_minus_b1")
                                  .Attr<float>("one_minus_b2")
                                  .Attr<float>("eps"));
