#include "build_tables.h"

#include <algorithm>
#include <numeric>

#include "llsh/common.h"

namespace llsh {

namespace {

// One table: its unique keys, bucket sizes and stats, gathered rows.
template <typename CodeT>
struct OneTable {
  std::vector<uint64_t> keys;
  std::vector<int64_t> sizes;
  std::vector<double> sum, sqnorm;
};

template <typename CodeT>
void build_one(const uint64_t* keys, const CodeT* codes, const int64_t* ids, int64_t n, int64_t r,
               bool keep_codes, OneTable<CodeT>& t, int64_t* ids_out, CodeT* codes_out) {
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), int64_t(0));
  // (key, id) order: ids are unique, so the order is total and independent of input order.
  std::sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
    return keys[a] != keys[b] ? keys[a] < keys[b] : ids[a] < ids[b];
  });
  std::vector<double> acc(r);
  for (int64_t i = 0; i < n;) {
    const uint64_t key = keys[perm[i]];
    int64_t j = i;
    std::fill(acc.begin(), acc.end(), 0.0);
    double sq = 0.0;
    for (; j < n && keys[perm[j]] == key; ++j) {
      const int64_t src = perm[j];
      const CodeT* c = codes + src * r;
      ids_out[j] = ids[src];
      if (keep_codes) std::copy(c, c + r, codes_out + j * r);
      for (int64_t k = 0; k < r; ++k) {
        const double v = load_code(c[k]);
        acc[k] += v;
        sq += v * v;
      }
    }
    t.keys.push_back(key);
    t.sizes.push_back(j - i);
    t.sum.insert(t.sum.end(), acc.begin(), acc.end());
    t.sqnorm.push_back(sq);
    i = j;
  }
}

}  // namespace

template <typename CodeT>
void build_tables_cpu(const uint64_t* keys, const CodeT* codes, const int64_t* ids, int64_t n_tables,
                      int64_t n, int64_t n_bits, bool keep_codes, int n_threads, BuiltTables<CodeT>& out) {
  std::vector<OneTable<CodeT>> tables(n_tables);
  out.ids.assign(n_tables * n, 0);
  out.codes.assign(keep_codes ? n_tables * n * n_bits : 0, CodeT());
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      build_one<CodeT>(keys + j * n, codes + j * n * n_bits, ids + j * n, n, n_bits, keep_codes, tables[j],
                       out.ids.data() + j * n, keep_codes ? out.codes.data() + j * n * n_bits : nullptr);
    }
  });
  out.keys.clear();
  out.offsets.clear();
  out.bucket_sum.clear();
  out.bucket_sqnorm.clear();
  out.table_start.assign(1, 0);
  int64_t row = 0;
  for (auto& t : tables) {
    out.keys.insert(out.keys.end(), t.keys.begin(), t.keys.end());
    for (int64_t s : t.sizes) { out.offsets.push_back(row); row += s; }
    out.bucket_sum.insert(out.bucket_sum.end(), t.sum.begin(), t.sum.end());
    out.bucket_sqnorm.insert(out.bucket_sqnorm.end(), t.sqnorm.begin(), t.sqnorm.end());
    out.table_start.push_back((int64_t)out.keys.size());
  }
  out.offsets.push_back(row);
}

template void build_tables_cpu<float>(const uint64_t*, const float*, const int64_t*, int64_t, int64_t, int64_t,
                                      bool, int, BuiltTables<float>&);
template void build_tables_cpu<uint16_t>(const uint64_t*, const uint16_t*, const int64_t*, int64_t, int64_t,
                                         int64_t, bool, int, BuiltTables<uint16_t>&);

}  // namespace llsh
