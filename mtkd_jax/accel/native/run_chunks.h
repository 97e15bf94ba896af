// Work split over XLA's intra-op pool, shared by the kernels of this folder.
#ifndef MTKD_JAX_NATIVE_RUN_CHUNKS_H_
#define MTKD_JAX_NATIVE_RUN_CHUNKS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace mtkd_native {

// Runs chunk(c) for every c in [0, chunks), each once, on the calling thread
// and on up to pool.num_threads() - 1 tasks of the pool; returns when all
// are done. Chunks are claimed from an atomic counter by the caller and the
// tasks alike, so the caller never waits for a task that has not started
// (concurrent kernels on a busy pool cannot deadlock). A task that starts
// after the last chunk was claimed finds none and touches only the shared
// counter, which it keeps alive; `chunk` runs only before this returns.
inline void RunChunks(xla::ffi::ThreadPool& pool, int64_t chunks,
                      std::function<void(int64_t)> chunk) {
  if (chunks <= 0) return;
  struct State {
    std::function<void(int64_t)> chunk;
    int64_t chunks;
    std::atomic<int64_t> next{0}, done{0};
    void Drain() {
      for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
        chunk(c);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>();
  state->chunk = std::move(chunk);
  state->chunks = chunks;
  const int64_t threads =
      std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), chunks);
  for (int64_t t = 1; t < threads; ++t) {
    pool.Schedule([state]() { state->Drain(); });
  }
  state->Drain();
  while (state->done.load(std::memory_order_acquire) < chunks) {
    std::this_thread::yield();  // chunks claimed by running pool tasks
  }
}

}  // namespace mtkd_native

#endif  // MTKD_JAX_NATIVE_RUN_CHUNKS_H_
