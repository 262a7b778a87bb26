// lookup: for each (query, table) find the query's bucket by binary search and reduce the
// distance of the query's real-valued code to that bucket (mean L2, light-LLSH, or exact mean
// squared L2).  A query whose key is absent from table j gets miss_value in column j.
#pragma once
#include <cstdint>

#include "llsh/sorted_tables.h"

namespace llsh {

// query_codes: [M, b, r] float32; query_keys: [M, b]; out: [M, b] float32.
// n_compared (may be null): receives the number of stored codes visited, summed over queries,
// which is the multiplication count the benchmarks report.
template <typename CodeT>
void lookup_cpu(const TablesView<CodeT>& tables, const float* query_codes, const uint64_t* query_keys,
                int64_t n_queries, Mode mode, float miss_value, float* out, int64_t* n_compared,
                int n_threads);

#ifdef LLSH_WITH_CUDA
template <typename CodeT>
void lookup_cuda(const TablesView<CodeT>& tables, const float* query_codes, const uint64_t* query_keys,
                 int64_t n_queries, Mode mode, float miss_value, float* out, void* stream);
#endif

}  // namespace llsh
