// build_tables: (key, code, id) rows of every table -> the sorted layout of llsh/sorted_tables.h.
// Steps: sort rows by (key, id), segment runs of equal keys, gather codes into bucket order,
// and reduce per-bucket sufficient statistics (sum of codes, sum of squared norms).
// merge_tables (CPU): two such layouts -> the layout of all their rows, by merging the sorted runs
// (what add() does with a batch built alone, and merge() with another index's tables).
#pragma once
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "llsh/sorted_tables.h"

namespace llsh {

// An allocator whose resize() leaves new elements uninitialised (no zero fill): the build writes
// every output element exactly once, from the thread that owns its table.
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <typename T>
using OutVector = std::vector<T, DefaultInitAllocator<T>>;

template <typename CodeT>
struct BuiltTables {
  OutVector<uint64_t> keys;
  OutVector<int64_t> table_start;
  OutVector<int64_t> offsets;
  OutVector<int64_t> ids;        // item ids in bucket order, [b * n]
  OutVector<CodeT> codes;        // [b * n, r], empty when keep_codes is false or the codes were sorted in place
  OutVector<double> bucket_sum;  // [U, r]
  OutVector<double> bucket_sqnorm;
};

// keys: [b, n] uint64; codes: [b, n, r]; ids: [b, n] int64 (unique within a table).
// Rows may come in any order: the output is ordered by (key, id), so adding data in several
// batches and rebuilding gives exactly the tables of one batch.
// codes_in_place (optional, with keep_codes): the same buffer as `codes`, which the caller gives
// up: its rows are permuted into bucket order in place and it becomes the output codes
// (out.codes stays empty), which saves allocating and faulting in a second b*n*r array.
// with_stats=false (only with keep_codes): skip bucket_sum / bucket_sqnorm, which the codes
// determine; bucket_stats_cpu derives them later, bit for bit the values the build would give.
template <typename CodeT>
void build_tables_cpu(const uint64_t* keys, const CodeT* codes, const int64_t* ids, int64_t n_tables,
                      int64_t n, int64_t n_bits, bool keep_codes, int n_threads, BuiltTables<CodeT>& out,
                      CodeT* codes_in_place = nullptr, bool with_stats = true);

// Per-bucket statistics of built tables from their codes [offsets[U], r] in bucket order:
// sum [U, r] and sqnorm [U] in float64, accumulated row by row in bucket order (as the build does).
template <typename CodeT>
void bucket_stats_cpu(const CodeT* codes, const int64_t* offsets, int64_t n_buckets, int64_t n_bits, double* sum,
                      double* sqnorm, int n_threads);

// One side of merge_tables_cpu: built tables that keep their codes and ids (sorted_tables.h's
// arrays; n_items rows per table).  id_shift is added to this side's ids in the output.
template <typename CodeT>
struct StoredTables {
  const uint64_t* keys = nullptr;        // [U]
  const int64_t* table_start = nullptr;  // [b + 1]
  const int64_t* offsets = nullptr;      // [U + 1]
  const CodeT* codes = nullptr;          // [b * n_items, r]
  const int64_t* ids = nullptr;          // [b * n_items]
  int64_t n_items = 0;
  int64_t id_shift = 0;
};

// The union of two built tables of the same b and r, ordered by (key, id): exactly the tables one
// build_tables_cpu of all their rows gives (ids must differ between the sides within a table).
// It merges the already sorted runs -- O(total rows) copies and no sort -- which is what lets
// add() and merge() append a batch to a large index without sorting the whole index again.
// Codes and ids only: the statistics are derived on demand (bucket_stats_cpu), as after a build
// with with_stats=false.  The caller checks the layouts (the bindings do).
template <typename CodeT>
void merge_tables_cpu(const StoredTables<CodeT>& a, const StoredTables<CodeT>& b, int64_t n_tables, int64_t n_bits,
                      int n_threads, BuiltTables<CodeT>& out);

// The tables without the items whose keep[id] is 0 (keep: [n_items]); the kept items renumbered
// 0 .. n_kept - 1 in their order (an id's new id is the number of kept ids below it), as one build
// of the kept rows would number them.  Renumbering is monotone, so the rows keep their (key, id)
// order and each bucket stays a run: one pass per table copying kept runs, no sort.  Buckets left
// empty go.  Codes and ids only, as merge_tables_cpu.  Each table must hold every item once
// (std::invalid_argument otherwise, checked before anything is written).
template <typename CodeT>
void remove_items_cpu(const StoredTables<CodeT>& t, const uint8_t* keep, int64_t n_tables, int64_t n_bits,
                      int n_threads, BuiltTables<CodeT>& out);

#ifdef LLSH_WITH_CUDA
// Device build, on `stream` (a cudaStream_t), in two phases so that the caller allocates every
// output at its exact size from its own allocator (no cudaMalloc, no managed memory here):
//   1. build_tables_cuda_sort   validates the input, sorts each table's rows by (key, id) with CUB
//                               radix sorts over key bits [0, n_bits) (stable, after a stable sort by
//                               id when ids are not already ascending), run-length encodes the
//                               (table, key) runs, and returns U = the number of buckets (it
//                               synchronises the stream twice: a validation flag, then U);
//   2. build_tables_cuda_finish writes keys/table_start/offsets/ids/codes/bucket stats for that U.
// Both phases share the scratch buffer `temp` (build_tables_cuda_temp_bytes), which carries the
// sorted permutation from 1 to 2: keep it alive and use the same stream for both calls.
// Limits: b * n < 2^31 rows (CUB run-length encode counts with int); 1 <= n_bits <= 64; keys must
// have no bit >= n_bits set (checked: std::invalid_argument).  float16 codes are CodeT = uint16_t.
template <typename CodeT>
struct CudaBuildArgs {
  const uint64_t* keys_in = nullptr;  // [b, n]
  const CodeT* codes_in = nullptr;    // [b, n, r]
  const int64_t* ids_in = nullptr;    // [b, n], unique within a table
  int64_t n_tables = 0, n = 0, n_bits = 0;
  // outputs (phase 2), sized for U = n_unique
  uint64_t* keys_out = nullptr;          // [U]
  int64_t* table_start_out = nullptr;    // [b + 1]
  int64_t* offsets_out = nullptr;        // [U + 1]
  CodeT* codes_out = nullptr;            // [b*n, r] (null: statistics-only index)
  int64_t* ids_out = nullptr;            // [b*n]
  double* bucket_sum_out = nullptr;      // [U, r]
  double* bucket_sqnorm_out = nullptr;   // [U]
  void* temp = nullptr;                  // scratch of build_tables_cuda_temp_bytes(b, n, r) bytes
  uint64_t temp_bytes = 0;
};
// What phase 1 hands to phase 2: U and where in `temp` the sorted permutation and unique keys are.
struct CudaBuildState {
  int64_t n_unique = 0;
  int perm_buffer = 0;  // which of the two permutation buffers holds the sorted order
  int key_buffer = 0;   // which of the two key buffers holds the unique keys
};
uint64_t build_tables_cuda_temp_bytes(int64_t n_tables, int64_t n, int64_t n_bits);
template <typename CodeT>
CudaBuildState build_tables_cuda_sort(const CudaBuildArgs<CodeT>& args, void* stream);
template <typename CodeT>
void build_tables_cuda_finish(const CudaBuildArgs<CodeT>& args, const CudaBuildState& state, void* stream);
#endif

}  // namespace llsh
