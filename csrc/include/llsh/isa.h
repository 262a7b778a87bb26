// Runtime choice of the CPU kernels' instruction set.  The default build targets plain x86-64
// (SSE2); AVX2 kernels are compiled beside it with __attribute__((target("avx2"))) and picked at
// run time when the CPU has AVX2, so the package runs on any x86_64 and is fast on current ones.
// Every level computes the same operations in the same order (no FMA, fixed reduction trees), so
// results are bit-identical whichever level runs; only the speed differs.
#pragma once
#include <algorithm>
#include <atomic>

#if defined(__x86_64__) && defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
#define LLSH_HAVE_AVX2_KERNELS 1
#define LLSH_TARGET_AVX2 __attribute__((target("avx2")))
#endif

namespace llsh {

enum IsaLevel : int { kIsaScalar = 0, kIsaSse2 = 1, kIsaAvx2 = 2 };

// The best level this CPU and this build support.
inline int detected_isa() {
#if defined(LLSH_HAVE_AVX2_KERNELS)
  static const int level = __builtin_cpu_supports("avx2") ? kIsaAvx2 : kIsaSse2;
  return level;
#elif defined(__SSE2__)
  return kIsaSse2;
#else
  return kIsaScalar;
#endif
}

// Upper bound set by set_isa_cap (tests compare the levels against each other).
inline std::atomic<int>& isa_cap() {
  static std::atomic<int> cap{kIsaAvx2};
  return cap;
}

inline int isa_level() { return std::min(detected_isa(), isa_cap().load(std::memory_order_relaxed)); }

}  // namespace llsh
