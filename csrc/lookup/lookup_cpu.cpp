#include "lookup.h"

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>
#include <cmath>

#include "llsh/common.h"

namespace llsh {

namespace {

// ||q - c||^2 over r components; the simd reduction lets the compiler vectorise the sum.
template <typename CodeT>
inline float squared_distance(const float* q, const CodeT* c, int64_t r) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < r; ++k) {
    const float d = q[k] - load_code(c[k]);
    acc += d * d;
  }
  return acc;
}

template <typename CodeT>
double bucket_distance(const TablesView<CodeT>& t, int64_t u, const float* q, Mode mode) {
  const int64_t r = t.n_bits;
  const int64_t begin = t.offsets[u], end = t.offsets[u + 1];
  const double count = double(end - begin);
  if (mode == Mode::kMean) {
    double acc = 0.0;
    for (int64_t row = begin; row < end; ++row) acc += std::sqrt((double)squared_distance(q, t.codes + row * r, r));
    return acc / count;
  }
  const double* sum = t.bucket_sum + u * r;
  if (mode == Mode::kLight) {
    double acc = 0.0;
    for (int64_t k = 0; k < r; ++k) {
      const double d = q[k] - sum[k] / count;
      acc += d * d;
    }
    return std::sqrt(acc);
  }
  // mean ||q - c||^2 = ||q||^2 - 2 q.mean + mean ||c||^2
  double qq = 0.0, qs = 0.0;
  for (int64_t k = 0; k < r; ++k) {
    qq += (double)q[k] * q[k];
    qs += (double)q[k] * sum[k];
  }
  const double v = qq - 2.0 * qs / count + t.bucket_sqnorm[u] / count;
  return v > 0.0 ? v : 0.0;
}

// Positions of `count` keys (q[0], q[stride], ...) in the ascending keys[lo, hi), -1 when absent:
// the same answer as find_key, but the searches run in lockstep, kGroup at a time, branch-free, so
// the cache misses of different searches overlap (one binary search alone waits on each probe).
void find_keys(const uint64_t* keys, int64_t lo, int64_t hi, const uint64_t* q, int64_t stride, int64_t count,
               int64_t* out, int64_t out_stride) {
  constexpr int64_t kGroup = 16;
  const int64_t len = hi - lo;
  for (int64_t g0 = 0; g0 < count; g0 += kGroup) {
    const int64_t g1 = std::min(count, g0 + kGroup);
    if (len == 0) {
      for (int64_t g = g0; g < g1; ++g) out[g * out_stride] = -1;
      continue;
    }
    int64_t base[kGroup];
    uint64_t key[kGroup];
    for (int64_t g = g0; g < g1; ++g) {
      base[g - g0] = lo;
      key[g - g0] = q[g * stride];
    }
    // invariant: the lower bound of key lies in [base, base + n]
    for (int64_t n = len; n > 1;) {
      const int64_t half = n / 2;
      for (int64_t g = 0; g < g1 - g0; ++g) base[g] += (int64_t)(keys[base[g] + half] < key[g]) * half;
      n -= half;
    }
    for (int64_t g = 0; g < g1 - g0; ++g) {
      const int64_t pos = base[g] + (int64_t)(keys[base[g]] < key[g]);
      out[(g0 + g) * out_stride] = (pos < hi && keys[pos] == key[g]) ? pos : -1;
    }
  }
}

}  // namespace

// A worker's share of queries worth starting a thread for (each costs b binary searches).
constexpr int64_t kMinQueriesPerThread = 2048;

template <typename CodeT>
void lookup_cpu(const TablesView<CodeT>& t, const float* query_codes, const uint64_t* query_keys,
                int64_t n_queries, Mode mode, float miss_value, float* out, int64_t* n_compared,
                int n_threads, double* out_sum, int64_t* out_count) {
  const int64_t b = t.n_tables, r = t.n_bits;
  std::atomic<int64_t> visited{0};
  // Scratch for every worker, allocated here: worker threads allocate nothing (a thread's first
  // malloc ties it to a glibc arena, whose pages outlive the thread and inflate the peak RSS).
  std::vector<int64_t> bucket_all(n_queries * b);
  std::vector<std::pair<int64_t, int64_t>> by_bucket_all(mode == Mode::kMean ? n_queries * b : 0);
  std::vector<int64_t> order_all(mode == Mode::kMean ? n_queries * b : 0);
  parallel_for(n_queries, n_threads, [&](int64_t begin, int64_t end) {
    const int64_t n_pairs = (end - begin) * b;  // (query, table) pairs of this worker, query-major
    int64_t* bucket = bucket_all.data() + begin * b;
    for (int64_t j = 0; j < b; ++j)
      find_keys(t.keys, t.table_start[j], t.table_start[j + 1], query_keys + begin * b + j, b, end - begin,
                bucket + j, b);
    // pair p = (query begin + p / b, table p % b)
    auto bucket_of = [&](int64_t p) { return bucket[p]; };
    int64_t local = 0, hits = 0, rows = 0;
    for (int64_t p = 0; p < n_pairs; ++p) {
      const int64_t u = bucket_of(p);
      if (u < 0) continue;
      ++hits;
      rows += t.offsets[u + 1] - t.offsets[u];
    }
    // kMean reads every code of the bucket: when buckets are shared (several rows per hit on
    // average), visiting the pairs in bucket order reads each bucket from memory once.  Each
    // pair's distance is computed by the same code in any order, so the results do not change.
    const int64_t* order = nullptr;
    if (mode == Mode::kMean && rows >= 4 * hits && hits > 1) {
      std::pair<int64_t, int64_t>* by_bucket = by_bucket_all.data() + begin * b;
      int64_t* ord = order_all.data() + begin * b;
      int64_t n_hit = 0, n_ord = 0;
      for (int64_t p = 0; p < n_pairs; ++p)
        if (bucket_of(p) >= 0) by_bucket[n_hit++] = {bucket_of(p), p};
      std::sort(by_bucket, by_bucket + n_hit);
      for (int64_t i = 0; i < n_hit; ++i) ord[n_ord++] = by_bucket[i].second;
      for (int64_t p = 0; p < n_pairs; ++p)
        if (bucket_of(p) < 0) ord[n_ord++] = p;
      order = ord;
    }
    // Pairs are independent, but each one's bucket is a cache miss (offsets, then its codes or
    // statistics) that the long distance loops keep the CPU from overlapping: prefetch ahead.
    constexpr int64_t kAhead = 8;
    auto pair_at = [&](int64_t i) { return order ? order[i] : i; };
    auto prefetch_offsets = [&](int64_t i) {
      if (i >= n_pairs) return;
      const int64_t u = bucket_of(pair_at(i));
      if (u >= 0) __builtin_prefetch(t.offsets + u);
    };
    auto prefetch_bucket = [&](int64_t i) {
      if (i >= n_pairs) return;
      const int64_t u = bucket_of(pair_at(i));
      if (u < 0) return;
      if (mode == Mode::kMean) {
        const char* c = reinterpret_cast<const char*>(t.codes + t.offsets[u] * r);
        const int64_t bytes = std::min<int64_t>((t.offsets[u + 1] - t.offsets[u]) * r, 64) * (int64_t)sizeof(CodeT);
        for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
      } else {
        const char* c = reinterpret_cast<const char*>(t.bucket_sum + u * r);
        for (int64_t o = 0; o < r * (int64_t)sizeof(double); o += 64) __builtin_prefetch(c + o);
        if (mode == Mode::kSquared) __builtin_prefetch(t.bucket_sqnorm + u);
      }
    };
    for (int64_t i = 0; i < std::min(n_pairs, 2 * kAhead); ++i) prefetch_offsets(i);
    for (int64_t i = 0; i < std::min(n_pairs, kAhead); ++i) prefetch_bucket(i);
    for (int64_t i = 0; i < n_pairs; ++i) {
      prefetch_offsets(i + 2 * kAhead);
      prefetch_bucket(i + kAhead);
      const int64_t p = pair_at(i);
      const int64_t mj = begin * b + p;  // index of (query, table) in the [M, b] outputs
      const float* q = query_codes + mj * r;
      const int64_t u = bucket_of(p);
      if (u < 0) {
        out[mj] = miss_value;
        if (out_sum) out_sum[mj] = 0.0;
        if (out_count) out_count[mj] = 0;
        continue;
      }
      const double dist = bucket_distance(t, u, q, mode);
      out[mj] = (float)dist;
      const int64_t count = t.offsets[u + 1] - t.offsets[u];
      if (out_sum) out_sum[mj] = dist * (double)count;
      if (out_count) out_count[mj] = count;
      local += mode == Mode::kMean ? count : 1;
    }
    visited += local;
  }, kMinQueriesPerThread);
  if (n_compared) *n_compared = visited.load();
}

template void lookup_cpu<float>(const TablesView<float>&, const float*, const uint64_t*, int64_t, Mode, float,
                                float*, int64_t*, int, double*, int64_t*);
template void lookup_cpu<uint16_t>(const TablesView<uint16_t>&, const float*, const uint64_t*, int64_t, Mode,
                                   float, float*, int64_t*, int, double*, int64_t*);

}  // namespace llsh
