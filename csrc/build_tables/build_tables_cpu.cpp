#include "build_tables.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "llsh/common.h"

namespace llsh {

namespace {

// A row of one table while sorting: sorting these records, rather than an index array, makes the
// passes read contiguous memory instead of chasing keys[] at random.
struct Record {
  uint64_t key;
  int64_t id;
  int64_t row;
};

// Stable LSD radix pass over byte `shift / 8` of digit(rec): src -> dst.
template <typename Digit>
void radix_pass(const Record* src, Record* dst, int64_t n, int shift, Digit digit) {
  int64_t count[257] = {0};
  for (int64_t i = 0; i < n; ++i) ++count[((digit(src[i]) >> shift) & 0xFF) + 1];
  for (int k = 0; k < 256; ++k) count[k + 1] += count[k];
  for (int64_t i = 0; i < n; ++i) dst[count[(digit(src[i]) >> shift) & 0xFF]++] = src[i];
}

// Stable LSD radix sort of rec by digit(rec) (64 bits), skipping the bytes every record shares.
template <typename Digit>
void radix_sort(std::vector<Record>& rec, std::vector<Record>& tmp, Digit digit) {
  const int64_t n = (int64_t)rec.size();
  if (n < 2) return;
  uint64_t all_or = 0, all_and = ~uint64_t(0);
  for (const Record& r : rec) {
    all_or |= digit(r);
    all_and &= digit(r);
  }
  const uint64_t varying = all_or ^ all_and;  // bits that differ between some records
  tmp.resize(n);
  for (int shift = 0; shift < 64; shift += 8) {
    if (((varying >> shift) & 0xFF) == 0) continue;
    radix_pass(rec.data(), tmp.data(), n, shift, digit);
    rec.swap(tmp);
  }
}

// Sorts one table's rows by (key, id) and returns its number of distinct keys.  ids are unique,
// so the order is total and independent of the input order.  Radix passes (stable): by id first
// unless the ids already ascend (the usual case: add() numbers its rows in order), then by key.
int64_t sort_table(const uint64_t* keys, const int64_t* ids, int64_t n, std::vector<Record>& rec,
                   std::vector<Record>& tmp) {
  rec.resize(n);
  bool ascending = true;
  for (int64_t i = 0; i < n; ++i) {
    rec[i] = {keys[i], ids[i], i};
    ascending &= (i == 0 || ids[i - 1] < ids[i]);
  }
  if (!ascending)  // flipping the sign bit orders signed ids as unsigned integers
    radix_sort(rec, tmp, [](const Record& r) { return (uint64_t)r.id ^ (uint64_t(1) << 63); });
  radix_sort(rec, tmp, [](const Record& r) { return r.key; });
  int64_t unique = 0;
  for (int64_t i = 0; i < n; ++i) unique += (i == 0 || rec[i].key != rec[i - 1].key);
  return unique;
}

// Moves table rows into sorted order in place: row i of the result is row rec[i].row of the
// input (cycle by cycle, one row of scratch), so no second copy of the codes is allocated.
template <typename CodeT>
void permute_rows(CodeT* rows, const std::vector<Record>& rec, int64_t r) {
  const int64_t n = (int64_t)rec.size();
  std::vector<char> done(n, 0);
  std::vector<CodeT> hold(r);
  for (int64_t i = 0; i < n; ++i) {
    if (done[i]) continue;
    done[i] = 1;
    if (rec[i].row == i) continue;
    std::memcpy(hold.data(), rows + i * r, r * sizeof(CodeT));
    int64_t k = i;
    while (rec[k].row != i) {
      const int64_t src = rec[k].row;
      std::memcpy(rows + k * r, rows + src * r, r * sizeof(CodeT));
      done[src] = 1;
      k = src;
    }
    std::memcpy(rows + k * r, hold.data(), r * sizeof(CodeT));
  }
}

// Adds one code to a bucket's float64 statistics; the one accumulation order of the engine.
template <typename CodeT>
inline void accumulate(const CodeT* c, int64_t r, double* acc, double& sq) {
  for (int64_t k = 0; k < r; ++k) {
    const double v = load_code(c[k]);
    acc[k] += v;
    sq += v * v;
  }
}

// Segments one sorted table straight into the output arrays: bucket u0.. of the table, rows
// row0.. of `codes`/`ids`; places the codes (gathered, or already permuted in place when
// `sorted_codes` is given) and, with_stats, reduces the per-bucket statistics in float64, in
// (key, id) order.
template <typename CodeT>
void fill_table(const std::vector<Record>& rec, const CodeT* codes, const CodeT* sorted_codes, const int64_t* ids,
                int64_t r, bool keep_codes, bool with_stats, int64_t u0, int64_t row0, BuiltTables<CodeT>& out) {
  const int64_t n = (int64_t)rec.size();
  int64_t u = u0;
  for (int64_t i = 0; i < n;) {
    const uint64_t key = rec[i].key;
    double* acc = with_stats ? out.bucket_sum.data() + u * r : nullptr;
    if (with_stats) std::fill(acc, acc + r, 0.0);
    double sq = 0.0;
    int64_t j = i;
    for (; j < n && rec[j].key == key; ++j) {
      const int64_t src = rec[j].row;
      const CodeT* c = sorted_codes ? sorted_codes + j * r : codes + src * r;
      out.ids[row0 + j] = ids[src];
      if (keep_codes && !sorted_codes) std::copy(c, c + r, out.codes.data() + (row0 + j) * r);
      if (with_stats) accumulate(c, r, acc, sq);
    }
    out.keys[u] = key;
    out.offsets[u] = row0 + i;
    if (with_stats) out.bucket_sqnorm[u] = sq;
    ++u;
    i = j;
  }
}

// Sizes the layout from each table's bucket count: table_start filled, keys / offsets / ids
// allocated for `rows` rows in all and left uninitialised (a second pass writes every element).
template <typename CodeT>
int64_t size_layout(const std::vector<int64_t>& n_unique, int64_t rows, BuiltTables<CodeT>& out) {
  const int64_t n_tables = (int64_t)n_unique.size();
  out.table_start.assign(n_tables + 1, 0);
  for (int64_t j = 0; j < n_tables; ++j) out.table_start[j + 1] = out.table_start[j] + n_unique[j];
  const int64_t U = out.table_start[n_tables];
  out.keys.resize(U);
  out.offsets.resize(U + 1);
  out.offsets[U] = rows;
  out.ids.resize(rows);
  return U;
}

}  // namespace

template <typename CodeT>
void build_tables_cpu(const uint64_t* keys, const CodeT* codes, const int64_t* ids, int64_t n_tables,
                      int64_t n, int64_t n_bits, bool keep_codes, int n_threads, BuiltTables<CodeT>& out,
                      CodeT* codes_in_place, bool with_stats) {
  with_stats = with_stats || !keep_codes;  // a statistics-only index has nothing else
  // Pass 1: sort each table and count its buckets; pass 2: fill preallocated outputs in place
  // (no per-table buffers to concatenate afterwards).  The outputs are left uninitialised
  // (DefaultInit): every element is written in pass 2, by the worker that owns the table, so the
  // first touch of their pages happens on all threads instead of in one zero-filling loop.
  std::vector<std::vector<Record>> sorted(n_tables);
  std::vector<int64_t> n_unique(n_tables);
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {
    std::vector<Record> tmp;
    for (int64_t j = begin; j < end; ++j) n_unique[j] = sort_table(keys + j * n, ids + j * n, n, sorted[j], tmp);
  });
  const int64_t U = size_layout(n_unique, n_tables * n, out);
  out.bucket_sum.resize(with_stats ? U * n_bits : 0);
  out.bucket_sqnorm.resize(with_stats ? U : 0);
  out.codes.resize(keep_codes && !codes_in_place ? n_tables * n * n_bits : 0);
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      CodeT* table_codes = codes_in_place ? codes_in_place + j * n * n_bits : nullptr;
      if (table_codes) permute_rows(table_codes, sorted[j], n_bits);
      fill_table<CodeT>(sorted[j], codes + j * n * n_bits, table_codes, ids + j * n, n_bits, keep_codes,
                        with_stats, out.table_start[j], j * n, out);
      std::vector<Record>().swap(sorted[j]);  // free as we go
    }
  });
}

template <typename CodeT>
void bucket_stats_cpu(const CodeT* codes, const int64_t* offsets, int64_t n_buckets, int64_t n_bits, double* sum,
                      double* sqnorm, int n_threads) {
  parallel_for(n_buckets, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      double* acc = sum + u * n_bits;
      std::fill(acc, acc + n_bits, 0.0);
      double sq = 0.0;
      for (int64_t row = offsets[u]; row < offsets[u + 1]; ++row) accumulate(codes + row * n_bits, n_bits, acc, sq);
      sqnorm[u] = sq;
    }
  });
}

namespace {

// Copies rows [r0, r1) of one side (codes and shifted ids) to the output at row `dst`.
template <typename CodeT>
inline void copy_rows(const StoredTables<CodeT>& t, int64_t r0, int64_t r1, int64_t r, int64_t dst,
                      BuiltTables<CodeT>& out) {
  std::memcpy(out.codes.data() + dst * r, t.codes + r0 * r, (r1 - r0) * r * sizeof(CodeT));
  for (int64_t i = r0; i < r1; ++i) out.ids[dst++] = t.ids[i] + t.id_shift;
}

// Buckets [i0, i1) of one side, whose keys the other side lacks, as one block (their rows are
// contiguous): keys, moved offsets, codes and ids.  Returns the next output row.
template <typename CodeT>
int64_t copy_buckets(const StoredTables<CodeT>& t, int64_t i0, int64_t i1, int64_t r, int64_t u, int64_t dst,
                     BuiltTables<CodeT>& out) {
  if (i0 == i1) return dst;
  const int64_t r0 = t.offsets[i0], r1 = t.offsets[i1], delta = dst - r0;
  std::memcpy(out.keys.data() + u, t.keys + i0, (i1 - i0) * sizeof(uint64_t));
  for (int64_t x = i0; x < i1; ++x) out.offsets[u + (x - i0)] = t.offsets[x] + delta;
  copy_rows(t, r0, r1, r, dst, out);
  return dst + (r1 - r0);
}

// One bucket present on both sides: its rows of a [a0, a1) and of b [b0, b1), merged by id.  An
// append (every id of b after a's, the case of add()) is two block copies.
template <typename CodeT>
int64_t merge_bucket(const StoredTables<CodeT>& a, int64_t a0, int64_t a1, const StoredTables<CodeT>& b, int64_t b0,
                     int64_t b1, int64_t r, int64_t dst, BuiltTables<CodeT>& out) {
  if (a.ids[a1 - 1] + a.id_shift < b.ids[b0] + b.id_shift) {
    copy_rows(a, a0, a1, r, dst, out);
    copy_rows(b, b0, b1, r, dst + (a1 - a0), out);
    return dst + (a1 - a0) + (b1 - b0);
  }
  while (a0 < a1 || b0 < b1) {
    const bool take_a = b0 == b1 || (a0 < a1 && a.ids[a0] + a.id_shift <= b.ids[b0] + b.id_shift);
    if (take_a) copy_rows(a, a0, a0 + 1, r, dst++, out), ++a0;
    else copy_rows(b, b0, b0 + 1, r, dst++, out), ++b0;
  }
  return dst;
}

// First index in [lo, hi) of ascending keys whose key is >= `key` (hi if none), by galloping from
// lo: O(log distance), so a small batch skips the large side's long runs in a few steps.
inline int64_t gallop(const uint64_t* keys, int64_t lo, int64_t hi, uint64_t key) {
  int64_t prev = lo, step = 1;
  while (lo < hi && keys[lo] < key) {
    prev = lo + 1;
    lo += step;
    step <<= 1;
  }
  return std::lower_bound(keys + prev, keys + std::min(lo, hi), key) - keys;
}

// Walks table j of both sides in key order: runs of buckets only one side has, then a shared key.
// Write=false counts the union's buckets; Write=true fills the output from bucket u and row dst.
template <bool Write, typename CodeT>
int64_t merge_table(const StoredTables<CodeT>& a, const StoredTables<CodeT>& b, int64_t j, int64_t r, int64_t u,
                    int64_t dst, BuiltTables<CodeT>* out) {
  int64_t i = a.table_start[j], ie = a.table_start[j + 1], k = b.table_start[j], ke = b.table_start[j + 1];
  const int64_t u0 = u;
  while (i < ie || k < ke) {
    const int64_t i2 = k < ke ? gallop(a.keys, i, ie, b.keys[k]) : ie;  // a's buckets before b's next key
    if (Write) dst = copy_buckets(a, i, i2, r, u, dst, *out);
    u += i2 - i;
    i = i2;
    const int64_t k2 = i < ie ? gallop(b.keys, k, ke, a.keys[i]) : ke;  // then b's before a's next key
    if (Write) dst = copy_buckets(b, k, k2, r, u, dst, *out);
    u += k2 - k;
    k = k2;
    if (i < ie && k < ke && a.keys[i] == b.keys[k]) {
      if (Write) {
        out->keys[u] = a.keys[i];
        out->offsets[u] = dst;
        dst = merge_bucket(a, a.offsets[i], a.offsets[i + 1], b, b.offsets[k], b.offsets[k + 1], r, dst, *out);
      }
      ++u, ++i, ++k;
    }
  }
  return u - u0;
}

}  // namespace

template <typename CodeT>
void merge_tables_cpu(const StoredTables<CodeT>& a, const StoredTables<CodeT>& b, int64_t n_tables, int64_t n_bits,
                      int n_threads, BuiltTables<CodeT>& out) {
  const int64_t n = a.n_items + b.n_items;
  std::vector<int64_t> n_unique(n_tables);
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {  // pass 1: each table's buckets
    for (int64_t j = begin; j < end; ++j) n_unique[j] = merge_table<false>(a, b, j, n_bits, 0, 0, &out);
  });
  size_layout(n_unique, n_tables * n, out);
  out.codes.resize(n_tables * n * n_bits);
  // pass 2: every output element written once, by the thread that owns its table
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) merge_table<true>(a, b, j, n_bits, out.table_start[j], j * n, &out);
  });
}

namespace {

// Walks table j's buckets.  Write=false counts the buckets that keep a row; Write=true fills the
// output from bucket u and row dst, copying each run of kept rows as one block.
template <bool Write, typename CodeT>
int64_t remove_from_table(const StoredTables<CodeT>& t, const uint8_t* keep, const int64_t* new_id, int64_t j,
                          int64_t r, int64_t u, int64_t dst, BuiltTables<CodeT>* out) {
  const int64_t u0 = u;
  for (int64_t x = t.table_start[j]; x < t.table_start[j + 1]; ++x) {
    const int64_t start = dst;
    for (int64_t i = t.offsets[x], end = t.offsets[x + 1]; i < end;) {
      if (!keep[t.ids[i]]) {
        ++i;
        continue;
      }
      int64_t k = i + 1;
      while (k < end && keep[t.ids[k]]) ++k;
      if (Write) {
        std::memcpy(out->codes.data() + dst * r, t.codes + i * r, (k - i) * r * sizeof(CodeT));
        for (int64_t y = i; y < k; ++y) out->ids[dst + (y - i)] = new_id[t.ids[y]];
      }
      dst += k - i;
      i = k;
    }
    if (dst > start) {
      if (Write) out->keys[u] = t.keys[x], out->offsets[u] = start;
      ++u;
    }
  }
  return u - u0;
}

}  // namespace

template <typename CodeT>
void remove_items_cpu(const StoredTables<CodeT>& t, const uint8_t* keep, int64_t n_tables, int64_t n_bits,
                      int n_threads, BuiltTables<CodeT>& out) {
  std::vector<int64_t> new_id(t.n_items);
  int64_t n = 0;
  for (int64_t i = 0; i < t.n_items; ++i) new_id[i] = n, n += keep[i] != 0;
  // each table must hold every item 0 .. n_items - 1 once in its n_items rows: the walk reads keep[]
  // at each id, and the output holds the n kept items' rows per table.  bad[j]: table j's first row
  // whose id is outside the items or seen before, -1 if none
  std::vector<int64_t> n_unique(n_tables), bad(n_tables, -1);
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {  // pass 1: checks, buckets left
    std::vector<uint8_t> seen(t.n_items);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(seen.begin(), seen.end(), uint8_t{0});
      for (int64_t i = j * t.n_items; i < (j + 1) * t.n_items; ++i) {
        const int64_t id = t.ids[i];
        if (id < 0 || id >= t.n_items || seen[id]) {
          bad[j] = i;
          break;
        }
        seen[id] = 1;
      }
      if (bad[j] < 0) n_unique[j] = remove_from_table<false>(t, keep, new_id.data(), j, n_bits, 0, 0, &out);
    }
  });
  for (int64_t j = 0; j < n_tables; ++j) {
    if (bad[j] < 0) continue;
    const int64_t id = t.ids[bad[j]];
    if (id < 0 || id >= t.n_items)
      throw std::invalid_argument("tables: ids must lie in 0 .. n_items - 1, got " + std::to_string(id) +
                                  " in table " + std::to_string(j));
    throw std::invalid_argument("tables: table " + std::to_string(j) + " holds id " + std::to_string(id) +
                                " twice (each table must hold every item once)");
  }
  size_layout(n_unique, n_tables * n, out);
  out.codes.resize(n_tables * n * n_bits);
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {  // pass 2: each table's own rows
    for (int64_t j = begin; j < end; ++j)
      remove_from_table<true>(t, keep, new_id.data(), j, n_bits, out.table_start[j], j * n, &out);
  });
}

template void remove_items_cpu<float>(const StoredTables<float>&, const uint8_t*, int64_t, int64_t, int,
                                      BuiltTables<float>&);
template void remove_items_cpu<uint16_t>(const StoredTables<uint16_t>&, const uint8_t*, int64_t, int64_t, int,
                                         BuiltTables<uint16_t>&);

template void merge_tables_cpu<float>(const StoredTables<float>&, const StoredTables<float>&, int64_t, int64_t, int,
                                      BuiltTables<float>&);
template void merge_tables_cpu<uint16_t>(const StoredTables<uint16_t>&, const StoredTables<uint16_t>&, int64_t,
                                         int64_t, int, BuiltTables<uint16_t>&);

template void bucket_stats_cpu<float>(const float*, const int64_t*, int64_t, int64_t, double*, double*, int);
template void bucket_stats_cpu<uint16_t>(const uint16_t*, const int64_t*, int64_t, int64_t, double*, double*, int);

template void build_tables_cpu<float>(const uint64_t*, const float*, const int64_t*, int64_t, int64_t, int64_t,
                                      bool, int, BuiltTables<float>&, float*, bool);
template void build_tables_cpu<uint16_t>(const uint64_t*, const uint16_t*, const int64_t*, int64_t, int64_t,
                                         int64_t, bool, int, BuiltTables<uint16_t>&, uint16_t*, bool);

}  // namespace llsh
