#include "build_tables.h"

#include <algorithm>

#include "llsh/common.h"

namespace llsh {

namespace {

// A row of one table while sorting: sorting these records, rather than an index array, makes the
// comparisons read contiguous memory instead of chasing keys[] at random.
struct Record {
  uint64_t key;
  int64_t id;
  int64_t row;
};

// Sorts one table's rows by (key, id) and returns its number of distinct keys.  ids are unique,
// so the order is total and independent of the input order.
int64_t sort_table(const uint64_t* keys, const int64_t* ids, int64_t n, std::vector<Record>& rec) {
  rec.resize(n);
  for (int64_t i = 0; i < n; ++i) rec[i] = {keys[i], ids[i], i};
  std::sort(rec.begin(), rec.end(), [](const Record& a, const Record& b) {
    return a.key != b.key ? a.key < b.key : a.id < b.id;
  });
  int64_t unique = 0;
  for (int64_t i = 0; i < n; ++i) unique += (i == 0 || rec[i].key != rec[i - 1].key);
  return unique;
}

// Segments one sorted table straight into the output arrays: bucket u0.. of the table, rows
// row0.. of `codes`/`ids`; gathers the codes and reduces the per-bucket statistics in float64.
template <typename CodeT>
void fill_table(const std::vector<Record>& rec, const CodeT* codes, const int64_t* ids, int64_t r, bool keep_codes,
                int64_t u0, int64_t row0, BuiltTables<CodeT>& out) {
  const int64_t n = (int64_t)rec.size();
  int64_t u = u0;
  for (int64_t i = 0; i < n;) {
    const uint64_t key = rec[i].key;
    double* acc = out.bucket_sum.data() + u * r;
    std::fill(acc, acc + r, 0.0);
    double sq = 0.0;
    int64_t j = i;
    for (; j < n && rec[j].key == key; ++j) {
      const int64_t src = rec[j].row;
      const CodeT* c = codes + src * r;
      out.ids[row0 + j] = ids[src];
      if (keep_codes) std::copy(c, c + r, out.codes.data() + (row0 + j) * r);
      for (int64_t k = 0; k < r; ++k) {
        const double v = load_code(c[k]);
        acc[k] += v;
        sq += v * v;
      }
    }
    out.keys[u] = key;
    out.offsets[u] = row0 + i;
    out.bucket_sqnorm[u] = sq;
    ++u;
    i = j;
  }
}

}  // namespace

template <typename CodeT>
void build_tables_cpu(const uint64_t* keys, const CodeT* codes, const int64_t* ids, int64_t n_tables,
                      int64_t n, int64_t n_bits, bool keep_codes, int n_threads, BuiltTables<CodeT>& out) {
  // Pass 1: sort each table and count its buckets; pass 2: fill preallocated outputs in place
  // (no per-table buffers to concatenate afterwards).
  std::vector<std::vector<Record>> sorted(n_tables);
  std::vector<int64_t> n_unique(n_tables);
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) n_unique[j] = sort_table(keys + j * n, ids + j * n, n, sorted[j]);
  });
  out.table_start.assign(n_tables + 1, 0);
  for (int64_t j = 0; j < n_tables; ++j) out.table_start[j + 1] = out.table_start[j] + n_unique[j];
  const int64_t U = out.table_start[n_tables];
  out.keys.resize(U);
  out.offsets.resize(U + 1);
  out.offsets[U] = n_tables * n;
  out.bucket_sum.resize(U * n_bits);
  out.bucket_sqnorm.resize(U);
  out.ids.resize(n_tables * n);
  out.codes.resize(keep_codes ? n_tables * n * n_bits : 0);
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      fill_table<CodeT>(sorted[j], codes + j * n * n_bits, ids + j * n, n_bits, keep_codes, out.table_start[j],
                        j * n, out);
      std::vector<Record>().swap(sorted[j]);  // free as we go
    }
  });
}

template void build_tables_cpu<float>(const uint64_t*, const float*, const int64_t*, int64_t, int64_t, int64_t,
                                      bool, int, BuiltTables<float>&);
template void build_tables_cpu<uint16_t>(const uint64_t*, const uint16_t*, const int64_t*, int64_t, int64_t,
                                         int64_t, bool, int, BuiltTables<uint16_t>&);

}  // namespace llsh
