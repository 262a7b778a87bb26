// The one data structure of llsh_index: b hash tables stored as flat sorted arrays.
//
// Table j (0 <= j < n_tables) holds every indexed item once.  Items are ordered by
// (key, item id), so a bucket -- all items sharing one r-bit key -- is a contiguous run.
// All tables live in the same flat arrays, which is what lets the CPU and CUDA engines
// share one layout and lets an index move between devices by copying six arrays:
//
//   keys          uint64 [U]         unique keys; table j owns keys[table_start[j] .. table_start[j+1])
//                                    and within one table they are strictly ascending
//   table_start   int64  [b + 1]     table_start[0] = 0, table_start[b] = U
//   offsets       int64  [U + 1]     bucket u holds rows offsets[u] .. offsets[u+1] of `codes`;
//                                    table j's rows are j*N .. (j+1)*N, so offsets[U] = b*N
//   codes         float32|float16 [b*N, r]   real-valued codes (sigmoid outputs) in bucket order
//                                    (absent in a statistics-only index, see below)
//   bucket_sum    float64 [U, r]     per-bucket sum of codes     (light-LLSH mean = sum / count)
//   bucket_sqnorm float64 [U]        per-bucket sum of ||code||^2 (exact mean squared L2)
//
// bucket_sum / bucket_sqnorm are a function of the codes: an index that stores the codes builds
// them lazily on the CPU (llsh_index._engine.ensure_statistics, bit for bit the eager values) the
// first time a "light"/"squared" lookup or a move to another device needs them (save() writes the
// codes without them: load() derives them again when needed).
//
// Key bit i of item x in table j is  code[x, j, i] >= 0.5  (i.e. logit >= 0), packed little-endian
// into a uint64: bit i of the key is code component i.  n_bits (r) is 1..64.
#pragma once
#include <cstdint>

namespace llsh {

// Distances a lookup can return per (query, table).
enum class Mode : int {
  kMean = 0,     // LLSH: mean L2 (not squared) distance to every code in the bucket
  kLight = 1,    // light-LLSH: L2 distance to the bucket's mean code
  kSquared = 2,  // exact mean squared L2, from bucket_sum / bucket_sqnorm in O(r)
};

// Read-only view of the tables; the arrays are owned by the caller (numpy, torch or cupy).
template <typename CodeT>
struct TablesView {
  int64_t n_tables = 0;   // b
  int64_t n_bits = 0;     // r
  int64_t n_items = 0;    // N (rows per table)
  const uint64_t* keys = nullptr;
  const int64_t* table_start = nullptr;
  const int64_t* offsets = nullptr;
  const CodeT* codes = nullptr;         // may be null in a statistics-only index
  const double* bucket_sum = nullptr;
  const double* bucket_sqnorm = nullptr;
  // Optional, CPU lookup only: a directory of each table's keys on their top dir_bits bits
  // (build_directory in lookup/lookup.h), [n_tables, 2^dir_bits + 1].  Derived from the keys,
  // never stored; null (dir_bits 0) means plain binary search over the whole table.
  const int64_t* directory = nullptr;
  int dir_bits = 0;
};

// Index of `key` in the ascending array keys[lo, hi), or -1.  Written by hand: a device function
// (no std::lower_bound) for the CUDA lookup.  The CPU engine searches many sorted query keys at
// once instead (find_keys / find_keys_dir in lookup_cpu.cpp).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t find_key(const uint64_t* keys, int64_t lo, int64_t hi, uint64_t key) {
  const int64_t end = hi;
  while (lo < hi) {
    const int64_t mid = lo + ((hi - lo) >> 1);
    if (keys[mid] < key) lo = mid + 1; else hi = mid;
  }
  return (lo < end && keys[lo] == key) ? lo : -1;
}

}  // namespace llsh
