// Small helpers shared by the CPU engine files: float16 storage and a thread pool-free parallel_for.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>
#ifdef __linux__
#include <sched.h>
#endif

namespace llsh {

// IEEE half stored as uint16 (numpy float16).  Conversion by bit manipulation so the engine
// needs no compiler-specific half type on the CPU.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
      mant &= 0x3FFu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Elements of streaming work (a float read and a few flops each) that make one thread worth starting.
constexpr int64_t kMinElementsPerThread = int64_t(1) << 18;

inline float load_code(float v) { return v; }
inline float load_code(uint16_t v) { return half_to_float(v); }

// The CPUs this process may run on (its affinity mask: a job pinned to 4 cores of a 128-core host
// gets 4 threads, not 128), else the machine's count.
inline int default_num_threads() {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  return (int)std::max(1u, std::thread::hardware_concurrency());
}

// Runs fn(begin, end) over [0, n) split into contiguous chunks on up to n_threads threads.
// Chunks are static so results never depend on scheduling (determinism).  min_per_worker: the
// fewest items worth a thread of their own; a thread costs tens of microseconds to start and
// its first touch of thread-local storage, so small calls stay on the calling thread.
// An exception in a worker (std::bad_alloc in a table's sort buffers) is rethrown on the calling
// thread after every worker has joined, as it would be with one thread: escaping a std::thread it
// would abort the process.  A thread that cannot be started leaves its chunks to the calling thread.
template <typename Fn>
void parallel_for(int64_t n, int n_threads, Fn&& fn, int64_t min_per_worker = 1) {
  if (n <= 0) return;
  if (n_threads <= 0) n_threads = default_num_threads();
  const int64_t workers = std::min<int64_t>(n_threads, std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_worker)));
  if (workers <= 1) { fn(int64_t(0), n); return; }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&fn, &error, &error_mutex](int64_t b, int64_t e) {
    try {
      fn(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers);
  const int64_t chunk = (n + workers - 1) / workers;
  int64_t w = 0;
  for (; w < workers; ++w) {
    const int64_t b = w * chunk, e = std::min(n, b + chunk);
    if (b >= e) break;
    try {
      pool.emplace_back(guarded, b, e);
    } catch (...) {  // no more threads (std::system_error: limits, no stack) or no memory for one
      break;         // (std::bad_alloc from its state): leaving here would destroy running threads
    }
  }
  for (; w < workers; ++w) {  // the chunks no thread took, with the same boundaries
    const int64_t b = w * chunk, e = std::min(n, b + chunk);
    if (b >= e) break;
    guarded(b, e);
  }
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace llsh
