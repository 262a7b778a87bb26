// build_tables: (key, code, id) rows of every table -> the sorted layout of llsh/sorted_tables.h.
// Steps: sort rows by (key, id), segment runs of equal keys, gather codes into bucket order,
// and reduce per-bucket sufficient statistics (sum of codes, sum of squared norms).
#pragma once
#include <cstdint>
#include <vector>

#include "llsh/sorted_tables.h"

namespace llsh {

template <typename CodeT>
struct BuiltTables {
  std::vector<uint64_t> keys;
  std::vector<int64_t> table_start;
  std::vector<int64_t> offsets;
  std::vector<int64_t> ids;        // item ids in bucket order, [b * n]
  std::vector<CodeT> codes;        // [b * n, r], empty when keep_codes is false
  std::vector<double> bucket_sum;  // [U, r]
  std::vector<double> bucket_sqnorm;
};

// keys: [b, n] uint64; codes: [b, n, r]; ids: [b, n] int64 (unique within a table).
// Rows may come in any order: the output is ordered by (key, id), so adding data in several
// batches and rebuilding gives exactly the tables of one batch.
template <typename CodeT>
void build_tables_cpu(const uint64_t* keys, const CodeT* codes, const int64_t* ids, int64_t n_tables,
                      int64_t n, int64_t n_bits, bool keep_codes, int n_threads, BuiltTables<CodeT>& out);

#ifdef LLSH_WITH_CUDA
// Device build.  The caller allocates everything (its allocator): the sizes come from
// build_tables_cuda_temp_bytes and, for the unique-key arrays, n_tables * n (an upper bound).
// Returns the number of unique keys U through *n_unique_host after a stream sync.
struct CudaBuildArgs {
  const uint64_t* keys_in;  // [b, n]
  const float* codes_in;    // [b, n, r] float32
  const int64_t* ids_in;    // [b, n]
  int64_t n_tables, n, n_bits;
  // outputs (capacity b*n where relevant)
  uint64_t* keys_out;        // [<= b*n] unique keys
  int64_t* table_start_out;  // [b + 1]
  int64_t* offsets_out;      // [<= b*n + 1]
  float* codes_out;          // [b*n, r] (may be null: statistics only)
  int64_t* ids_out;          // [b*n]
  double* bucket_sum_out;    // [<= b*n, r]
  double* bucket_sqnorm_out; // [<= b*n]
  void* temp;                // scratch of build_tables_cuda_temp_bytes
  size_t temp_bytes;
};
size_t build_tables_cuda_temp_bytes(int64_t n_tables, int64_t n, int64_t n_bits);
int64_t build_tables_cuda(const CudaBuildArgs& args, void* stream);
#endif

}  // namespace llsh
