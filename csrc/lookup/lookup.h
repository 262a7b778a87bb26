// lookup: for each (query, table) find the query's bucket by binary search and reduce the
// distance of the query's real-valued code to that bucket (mean L2, light-LLSH, or exact mean
// squared L2).  A query whose key is absent from table j gets miss_value in column j.
#pragma once
#include <cstdint>

#include "llsh/sorted_tables.h"

namespace llsh {

// query_codes: [M, b, r] float32; query_keys: [M, b]; out: [M, b] float32.
// n_compared (may be null): receives, summed over queries, the number of stored codes visited in
// mode mean (the multiplication count the benchmarks report) and the number of buckets hit in
// the light and squared modes (one bucket mean or statistic each).
// out_sum / out_count (may be null): the un-normalised partial sums of a shard, [M, b] each:
// count = bucket size (0 on a miss) and sum = count * distance in float64, so shards of one
// bucket combine exactly as sum(sums) / sum(counts).
template <typename CodeT>
void lookup_cpu(const TablesView<CodeT>& tables, const float* query_codes, const uint64_t* query_keys,
                int64_t n_queries, Mode mode, float miss_value, float* out, int64_t* n_compared,
                int n_threads, double* out_sum = nullptr, int64_t* out_count = nullptr);

// The lookup directory: slot s of table j covers the keys whose top dir_bits bits (of n_bits) are
// s, i.e. min(key >> (n_bits - dir_bits), 2^dir_bits - 1) == s (keys above n_bits bits fall in the
// last slot), and dir[j * (2^dir_bits + 1) + s] is the position in `keys` of the first such key
// (the next slot's entry ends it; entry 2^dir_bits is table_start[j + 1]).  A lookup then
// binary-searches a slot of a few keys instead of the whole table: one or two cache misses
// instead of ~log2(U).
// directory_bits: the width used for tables of at most max_unique keys: about one key per slot,
// at most 16 bits (a 0.5 MiB directory per table), at most n_bits; 0 = no directory.
int directory_bits(int64_t max_unique, int64_t n_bits);
void build_directory(const uint64_t* keys, const int64_t* table_start, int64_t n_tables, int64_t n_bits,
                     int dir_bits, int64_t* dir, int n_threads);

#ifdef LLSH_WITH_CUDA
// Device lookup on `stream` (a cudaStream_t); every pointer is device memory.  One warp per
// (query, table) binary-searches the table (llsh::find_key) and reduces the bucket; in mode
// kMean, buckets of more than kLookupBigBucket rows are queued and reduced by a whole block.
// out: [M, b] float32.  out_min (may be null): [M] min over the b columns.  visited (may be null):
// [M, b] int64, rows visited per (query, table) as counted by lookup_cpu (0 on a miss).
// out_sum / out_count (may be null): the shard partial sums of lookup_cpu, [M, b] each (float64 sum
// of the distances, int64 bucket size; 0 and 0 on a miss), for an exact merge across shards.
// temp: scratch of lookup_cuda_temp_bytes(M, b) bytes.  No allocation, no synchronisation.
constexpr int64_t kLookupBigBucket = 2048;
uint64_t lookup_cuda_temp_bytes(int64_t n_queries, int64_t n_tables);
template <typename CodeT>
void lookup_cuda(const TablesView<CodeT>& tables, const float* query_codes, const uint64_t* query_keys,
                 int64_t n_queries, Mode mode, float miss_value, float* out, float* out_min, int64_t* visited,
                 double* out_sum, int64_t* out_count, void* temp, uint64_t temp_bytes, void* stream);
#endif

}  // namespace llsh
