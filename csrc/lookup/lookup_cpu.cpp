#include "lookup.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "llsh/common.h"
#include "llsh/isa.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(LLSH_HAVE_AVX2_KERNELS)
#include <immintrin.h>
#endif

namespace llsh {

namespace {

// ---- mean mode: ||q - c|| for every row c of a bucket ------------------------------------------
// The one definition every instruction set computes bit for bit: ||q - c||^2 in float32 as eight
// lane sums p[l] = sum of (q_k - c_k)^2 over k = l mod 8 in ascending k, reduced as
// t_l = p_l + p_{l+4}, then (t0 + t1) + (t2 + t3) (the order of AVX's horizontal adds); its square
// root in float64.  A bucket's mean adds these float64 roots row by row in bucket order.  The
// vector kernels need r % 8 == 0 (whole 8-lane blocks, every r the engine is used with in
// practice); other r take the portable loop.

// Portable reference (also the build without SSE2).
inline float sqdist_scalar(const float* q, const float* c, int64_t r) {
  float p[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int64_t k = 0; k < r; ++k) {
    const float d = q[k] - c[k];
    p[k & 7] += d * d;
  }
  return ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
}

// rows: n contiguous rows of r floats; out[i] = ||q - rows[i]|| in float64.
void row_dists_scalar(const float* q, const float* rows, int64_t n, int64_t r, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::sqrt((double)sqdist_scalar(q, rows + i * r, r));
}

#if defined(__SSE2__)
// Four rows' t vectors (t_l = p_l + p_{l+4}, lanes 0-3) -> their ||q - c||^2 (transposed, then
// (t0 + t1) + (t2 + t3)) -> float64 roots into out[0..n), n <= 4.
inline void finish4(__m128 t0, __m128 t1, __m128 t2, __m128 t3, int64_t n, double* out) {
  _MM_TRANSPOSE4_PS(t0, t1, t2, t3);  // t0 now holds lane 0 of the four rows, t1 lane 1, ...
  const __m128 d = _mm_add_ps(_mm_add_ps(t0, t1), _mm_add_ps(t2, t3));
  double s[4];
  _mm_storeu_pd(s, _mm_sqrt_pd(_mm_cvtps_pd(d)));
  _mm_storeu_pd(s + 2, _mm_sqrt_pd(_mm_cvtps_pd(_mm_movehl_ps(d, d))));
  std::memcpy(out, s, n * sizeof(double));
}

// Row pointers of a block of `width` rows from row i: a short last block repeats its last row
// (its results are not kept).
inline void block_rows(const float* rows, int64_t i, int64_t n, int64_t r, int width, const float** c) {
  for (int j = 0; j < width; ++j) c[j] = rows + std::min<int64_t>(i + j, n - 1) * r;
}

#define LLSH_SSE2_STEP(lo, hi, row)                                 \
  do {                                                              \
    const __m128 dl = _mm_sub_ps(qlo, _mm_loadu_ps((row) + k));     \
    const __m128 dh = _mm_sub_ps(qhi, _mm_loadu_ps((row) + k + 4)); \
    lo = _mm_add_ps(lo, _mm_mul_ps(dl, dl));                        \
    hi = _mm_add_ps(hi, _mm_mul_ps(dh, dh));                        \
  } while (0)

// Four rows at a time, independent accumulators, so the rows' dependency chains overlap.
void row_dists_sse2(const float* q, const float* rows, int64_t n, int64_t r, double* out) {
  if (r & 7) return row_dists_scalar(q, rows, n, r, out);
  for (int64_t i = 0; i < n; i += 4) {
    const float* c[4];
    block_rows(rows, i, n, r, 4, c);
    __m128 l0 = _mm_setzero_ps(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
    for (int64_t k = 0; k < r; k += 8) {
      const __m128 qlo = _mm_loadu_ps(q + k), qhi = _mm_loadu_ps(q + k + 4);
      LLSH_SSE2_STEP(l0, h0, c[0]);
      LLSH_SSE2_STEP(l1, h1, c[1]);
      LLSH_SSE2_STEP(l2, h2, c[2]);
      LLSH_SSE2_STEP(l3, h3, c[3]);
    }
    finish4(_mm_add_ps(l0, h0), _mm_add_ps(l1, h1), _mm_add_ps(l2, h2), _mm_add_ps(l3, h3),
            std::min<int64_t>(4, n - i), out + i);
  }
}
#undef LLSH_SSE2_STEP
#endif

#if defined(LLSH_HAVE_AVX2_KERNELS)
#define LLSH_AVX2_STEP(a, row)                                         \
  do {                                                                 \
    const __m256 dv = _mm256_sub_ps(qv, _mm256_loadu_ps((row) + k));   \
    a = _mm256_add_ps(a, _mm256_mul_ps(dv, dv));                       \
  } while (0)

// t vectors of rows a and b side by side: [t(a) | t(b)], t_l = p_l + p_{l+4}.
LLSH_TARGET_AVX2 inline __m256 pair_t(__m256 a, __m256 b) {
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

LLSH_TARGET_AVX2 inline __m128 t_of(__m256 a) {
  return _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
}

// Eight rows at a time: the lane sums reduced for all eight together by two rounds of horizontal
// adds (the tree of sqdist_scalar); a tail of 1-7 rows goes four at a time, as row_dists_sse2.
LLSH_TARGET_AVX2 void row_dists_avx2(const float* q, const float* rows, int64_t n, int64_t r, double* out) {
  if (r & 7) return row_dists_scalar(q, rows, n, r, out);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float* c = rows + i * r;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t k = 0; k < r; k += 8) {
      const __m256 qv = _mm256_loadu_ps(q + k);
      LLSH_AVX2_STEP(a0, c);
      LLSH_AVX2_STEP(a1, c + r);
      LLSH_AVX2_STEP(a2, c + 2 * r);
      LLSH_AVX2_STEP(a3, c + 3 * r);
      LLSH_AVX2_STEP(a4, c + 4 * r);
      LLSH_AVX2_STEP(a5, c + 5 * r);
      LLSH_AVX2_STEP(a6, c + 6 * r);
      LLSH_AVX2_STEP(a7, c + 7 * r);
    }
    // hadd(hadd(S01, S23), hadd(S45, S67)) = rows [0 2 4 6 | 1 3 5 7], each (t0 + t1) + (t2 + t3)
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(pair_t(a0, a1), pair_t(a2, a3)),
                                    _mm256_hadd_ps(pair_t(a4, a5), pair_t(a6, a7)));
    const __m256 d = _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_pd(out + i, _mm256_sqrt_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(d))));
    _mm256_storeu_pd(out + i + 4, _mm256_sqrt_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(d, 1))));
  }
  for (; i < n; i += 4) {
    const float* c[4];
    block_rows(rows, i, n, r, 4, c);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < r; k += 8) {
      const __m256 qv = _mm256_loadu_ps(q + k);
      LLSH_AVX2_STEP(a0, c[0]);
      LLSH_AVX2_STEP(a1, c[1]);
      LLSH_AVX2_STEP(a2, c[2]);
      LLSH_AVX2_STEP(a3, c[3]);
    }
    finish4(t_of(a0), t_of(a1), t_of(a2), t_of(a3), std::min<int64_t>(4, n - i), out + i);
  }
}
#undef LLSH_AVX2_STEP
#endif

using RowDistsFn = void (*)(const float*, const float*, int64_t, int64_t, double*);

RowDistsFn row_dists_kernel() {
  switch (isa_level()) {
#if defined(LLSH_HAVE_AVX2_KERNELS)
    case kIsaAvx2:
      return row_dists_avx2;
#endif
#if defined(__SSE2__)
    case kIsaSse2:
      return row_dists_sse2;
#endif
    default:
      return row_dists_scalar;
  }
}

// Rows [begin, begin + n) (n <= kRowBatch) of the codes as contiguous float32 rows: float codes
// in place, float16 codes converted into `scratch` (kRowBatch * r floats).
constexpr int64_t kRowBatch = 64;

inline const float* float_rows(const float* codes, int64_t begin, int64_t, int64_t r, float*) {
  return codes + begin * r;
}

inline const float* float_rows(const uint16_t* codes, int64_t begin, int64_t n, int64_t r, float* scratch) {
  for (int64_t i = 0; i < n * r; ++i) scratch[i] = half_to_float(codes[begin * r + i]);
  return scratch;
}

// acc + the distances of q to rows [begin, end), added one by one in order.
template <typename CodeT>
double bucket_row_sum(RowDistsFn kernel, const float* q, const CodeT* codes, int64_t begin, int64_t end,
                      int64_t r, float* scratch, double acc) {
  double d[kRowBatch];
  for (int64_t b0 = begin; b0 < end; b0 += kRowBatch) {
    const int64_t n = std::min(kRowBatch, end - b0);
    kernel(q, float_rows(codes, b0, n, r, scratch), n, r, d);
    for (int64_t i = 0; i < n; ++i) acc += d[i];
  }
  return acc;
}

// scratch: kRowBatch * r floats (float16 codes only).
template <typename CodeT>
double bucket_distance(const TablesView<CodeT>& t, int64_t u, const float* q, Mode mode, RowDistsFn kernel,
                       float* scratch) {
  const int64_t r = t.n_bits;
  const int64_t begin = t.offsets[u], end = t.offsets[u + 1];
  const double count = double(end - begin);
  if (mode == Mode::kMean) return bucket_row_sum(kernel, q, t.codes, begin, end, r, scratch, 0.0) / count;
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

// find_keys through a table's directory `dir` (2^dir_bits + 1 entries, see build_directory): each
// key is searched only in its slot.  Three sweeps over a group (slot entries, then the slots'
// first keys, then the searches) so that the cache misses of a group's keys overlap.  Slot bounds
// are clamped to [lo, hi): a directory that does not match the keys can miss, never read outside.
void find_keys_dir(const uint64_t* keys, int64_t lo, int64_t hi, const int64_t* dir, int dir_bits, int64_t n_bits,
                   const uint64_t* q, int64_t stride, int64_t count, int64_t* out, int64_t out_stride) {
  constexpr int64_t kGroup = 16;
  const int shift = (int)(n_bits - dir_bits);  // dir_bits >= 1, so shift <= 63
  const uint64_t last_slot = (uint64_t(1) << dir_bits) - 1;
  if (hi <= lo) {
    for (int64_t g = 0; g < count; ++g) out[g * out_stride] = -1;
    return;
  }
  for (int64_t g0 = 0; g0 < count; g0 += kGroup) {
    const int64_t n_group = std::min(count - g0, kGroup);
    uint64_t key[kGroup], slot[kGroup];
    int64_t base[kGroup], len[kGroup];
    for (int64_t g = 0; g < n_group; ++g) {
      key[g] = q[(g0 + g) * stride];
      slot[g] = std::min(key[g] >> shift, last_slot);
      __builtin_prefetch(dir + slot[g]);
    }
    int64_t base0[kGroup];
    for (int64_t g = 0; g < n_group; ++g) {
      base0[g] = base[g] = std::max(dir[slot[g]], lo);
      len[g] = std::min(dir[slot[g] + 1], hi) - base[g];
      if (len[g] > 0) __builtin_prefetch(keys + base[g] + len[g] / 2);
    }
    // lockstep over the group, as find_keys: a search whose slot is done (n <= 1) idles on half = 0
    int64_t n[kGroup], longest = 0;
    for (int64_t g = 0; g < n_group; ++g) {
      if (len[g] <= 0) base[g] = lo;  // an empty slot idles on keys[lo] (the table is not empty)
      n[g] = std::max<int64_t>(len[g], 1);
      longest = std::max(longest, n[g]);
    }
    for (int64_t step = longest; step > 1; step -= step / 2)
      for (int64_t g = 0; g < n_group; ++g) {
        const int64_t half = n[g] / 2;
        base[g] += (int64_t)(keys[base[g] + half] < key[g]) * half;
        n[g] -= half;
      }
    for (int64_t g = 0; g < n_group; ++g) {
      int64_t pos = -1;
      if (len[g] > 0) {
        const int64_t at = base[g] + (int64_t)(keys[base[g]] < key[g]);
        if (at < base0[g] + len[g] && keys[at] == key[g]) pos = at;
      }
      out[(g0 + g) * out_stride] = pos;
    }
  }
}

// Sorts (bucket, pair) records by bucket, stably (pairs were added in ascending order, so the
// result is ordered by (bucket, pair) as std::sort would order it): LSD radix passes of 11 bits
// over the bucket numbers (< n_buckets), through `tmp` (n records).  A few linear passes instead
// of a comparison sort's ~log2(n) (the sort cost as much as the distances at small buckets).
void sort_by_bucket(std::pair<int64_t, int64_t>* rec, std::pair<int64_t, int64_t>* tmp, int64_t n,
                    uint64_t n_buckets) {
  constexpr int kBits = 11;
  constexpr int64_t kRadix = int64_t(1) << kBits;
  int64_t count[kRadix];
  for (int shift = 0; shift < 64 && (n_buckets - 1) >> shift; shift += kBits) {
    std::fill(count, count + kRadix, 0);
    for (int64_t i = 0; i < n; ++i) ++count[((uint64_t)rec[i].first >> shift) & (kRadix - 1)];
    int64_t sum = 0;
    for (int64_t d = 0; d < kRadix; ++d) {
      const int64_t c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) tmp[count[((uint64_t)rec[i].first >> shift) & (kRadix - 1)]++] = rec[i];
    std::copy(tmp, tmp + n, rec);
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
  std::vector<std::pair<int64_t, int64_t>> by_bucket_all(mode == Mode::kMean ? 2 * n_queries * b : 0);
  std::vector<double> acc_all(mode == Mode::kMean ? n_queries * b : 0);
  parallel_for(n_queries, n_threads, [&](int64_t begin, int64_t end) {
    const int64_t n_pairs = (end - begin) * b;  // (query, table) pairs of this worker, query-major
    const RowDistsFn kernel = row_dists_kernel();
    float scratch[kRowBatch * 64];  // float16 rows converted for the kernel (r <= 64)
    int64_t* bucket = bucket_all.data() + begin * b;
    for (int64_t j = 0; j < b; ++j) {
      if (t.directory)
        find_keys_dir(t.keys, t.table_start[j], t.table_start[j + 1], t.directory + j * ((int64_t(1) << t.dir_bits) + 1),
                      t.dir_bits, r, query_keys + begin * b + j, b, end - begin, bucket + j, b);
      else
        find_keys(t.keys, t.table_start[j], t.table_start[j + 1], query_keys + begin * b + j, b, end - begin,
                  bucket + j, b);
    }
    // pair p = (query begin + p / b, table p % b)
    auto bucket_of = [&](int64_t p) { return bucket[p]; };
    int64_t local = 0, hits = 0, rows = 0;
    for (int64_t p = 0; p < n_pairs; ++p) {
      const int64_t u = bucket_of(p);
      if (u < 0) continue;
      ++hits;
      rows += t.offsets[u + 1] - t.offsets[u];
    }
    // The outputs of pair p (bucket u, -1 on a miss) at distance dist.
    auto emit = [&](int64_t p, int64_t u, double dist) {
      const int64_t mj = begin * b + p;  // index of (query, table) in the [M, b] outputs
      if (u < 0) {
        out[mj] = miss_value;
        if (out_sum) out_sum[mj] = 0.0;
        if (out_count) out_count[mj] = 0;
        return;
      }
      out[mj] = (float)dist;
      const int64_t count = t.offsets[u + 1] - t.offsets[u];
      if (out_sum) out_sum[mj] = dist * (double)count;
      if (out_count) out_count[mj] = count;
      local += mode == Mode::kMean ? count : 1;
    };
    // kMean reads every code of the bucket: when buckets are shared (several rows per hit on
    // average), the pairs are grouped by bucket and each group reads its bucket once, kRowBatch
    // rows at a time (one L1-sized tile) for all its queries, instead of once per query from L3
    // or memory.  Each query's sum still adds the bucket's rows one by one in order, exactly
    // as bucket_distance does, so the results do not depend on the grouping.
    if (mode == Mode::kMean && rows >= 4 * hits && hits > 1) {
      std::pair<int64_t, int64_t>* by_bucket = by_bucket_all.data() + 2 * begin * b;
      double* acc = acc_all.data() + begin * b;
      int64_t n_hit = 0;
      for (int64_t p = 0; p < n_pairs; ++p) {
        if (bucket_of(p) >= 0) by_bucket[n_hit++] = {bucket_of(p), p};
        else emit(p, -1, 0.0);
      }
      sort_by_bucket(by_bucket, by_bucket + n_pairs, n_hit, (uint64_t)t.table_start[b]);
      // Most groups are small, and both their bucket and their queries' codes are cache misses:
      // a cursor kAheadGroups groups ahead prefetches each group's bucket (up to kPrefetchBytes)
      // and query codes while the groups before it compute.
      constexpr int kAheadGroups = 3;
      constexpr int64_t kPrefetchBytes = 4096;
      auto group_end = [&](int64_t i) {
        int64_t e = i + 1;
        while (e < n_hit && by_bucket[e].first == by_bucket[i].first) ++e;
        return e;
      };
      auto prefetch_group = [&](int64_t i, int64_t e) {
        const int64_t u = by_bucket[i].first;
        const char* c = reinterpret_cast<const char*>(t.codes + t.offsets[u] * r);
        const int64_t bytes = std::min<int64_t>((t.offsets[u + 1] - t.offsets[u]) * r * (int64_t)sizeof(CodeT), kPrefetchBytes);
        for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
        for (int64_t k = i; k < e; ++k) {
          const char* qc = reinterpret_cast<const char*>(query_codes + (begin * b + by_bucket[k].second) * r);
          for (int64_t o = 0; o < r * (int64_t)sizeof(float); o += 64) __builtin_prefetch(qc + o);
        }
      };
      int64_t ahead = 0;  // start of the next group to prefetch
      for (int g = 0; g < kAheadGroups && ahead < n_hit; ++g) {
        const int64_t e = group_end(ahead);
        prefetch_group(ahead, e);
        ahead = e;
      }
      for (int64_t i = 0; i < n_hit;) {
        const int64_t u = by_bucket[i].first;
        const int64_t i1 = group_end(i);
        if (ahead < n_hit) {
          const int64_t e = group_end(ahead);
          __builtin_prefetch(t.offsets + by_bucket[e < n_hit ? e : ahead].first);  // needed by the next prefetch
          prefetch_group(ahead, e);
          ahead = e;
        }
        const int64_t row_end = t.offsets[u + 1];
        std::fill(acc, acc + (i1 - i), 0.0);
        for (int64_t row = t.offsets[u]; row < row_end; row += kRowBatch) {
          const int64_t n = std::min(kRowBatch, row_end - row);
          const float* tile = float_rows(t.codes, row, n, r, scratch);
          for (int64_t k = i; k < i1; ++k)
            acc[k - i] = bucket_row_sum(kernel, query_codes + (begin * b + by_bucket[k].second) * r, tile, 0, n, r,
                                        nullptr, acc[k - i]);
        }
        const double count = double(row_end - t.offsets[u]);
        for (int64_t k = i; k < i1; ++k) emit(by_bucket[k].second, u, acc[k - i] / count);
        i = i1;
      }
      visited += local;
      return;
    }
    // Pairs are independent, but each one's bucket is a cache miss (offsets, then its codes or
    // statistics) that the long distance loops keep the CPU from overlapping: prefetch ahead.
    constexpr int64_t kAhead = 8;
    auto prefetch_offsets = [&](int64_t p) {
      if (p >= n_pairs) return;
      const int64_t u = bucket_of(p);
      if (u >= 0) __builtin_prefetch(t.offsets + u);
    };
    auto prefetch_bucket = [&](int64_t p) {
      if (p >= n_pairs) return;
      const int64_t u = bucket_of(p);
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
    for (int64_t p = 0; p < std::min(n_pairs, 2 * kAhead); ++p) prefetch_offsets(p);
    for (int64_t p = 0; p < std::min(n_pairs, kAhead); ++p) prefetch_bucket(p);
    for (int64_t p = 0; p < n_pairs; ++p) {
      prefetch_offsets(p + 2 * kAhead);
      prefetch_bucket(p + kAhead);
      const int64_t u = bucket_of(p);
      emit(p, u, u < 0 ? 0.0 : bucket_distance(t, u, query_codes + (begin * b + p) * r, mode, kernel, scratch));
    }
    visited += local;
  }, kMinQueriesPerThread);
  if (n_compared) *n_compared = visited.load();
}

int directory_bits(int64_t max_unique, int64_t n_bits) {
  int bits = 0;
  while (bits < 16 && bits < n_bits && (int64_t(2) << bits) <= max_unique) ++bits;  // 2^bits <= max_unique
  return bits;
}

void build_directory(const uint64_t* keys, const int64_t* table_start, int64_t n_tables, int64_t n_bits,
                     int dir_bits, int64_t* dir, int n_threads) {
  const int64_t n_slots = int64_t(1) << dir_bits;
  const int shift = (int)(n_bits - dir_bits);
  const uint64_t last_slot = (uint64_t)n_slots - 1;
  parallel_for(n_tables, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      int64_t* d = dir + j * (n_slots + 1);
      int64_t i = table_start[j];
      const int64_t stop = table_start[j + 1];
      for (int64_t s = 0; s < n_slots; ++s) {
        while (i < stop && std::min(keys[i] >> shift, last_slot) < (uint64_t)s) ++i;
        d[s] = i;
      }
      d[n_slots] = stop;
    }
  }, 2);
}

template void lookup_cpu<float>(const TablesView<float>&, const float*, const uint64_t*, int64_t, Mode, float,
                                float*, int64_t*, int, double*, int64_t*);
template void lookup_cpu<uint16_t>(const TablesView<uint16_t>&, const float*, const uint64_t*, int64_t, Mode,
                                   float, float*, int64_t*, int, double*, int64_t*);

}  // namespace llsh
