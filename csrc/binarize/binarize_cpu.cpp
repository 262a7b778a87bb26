#include "binarize.h"

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>

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

// Cephes expf: exp(z) = 2^n * p(z - n ln2), Cody-Waite reduction, degree-7 polynomial.  Clamping z
// to [-87, 88] keeps 2^n a normal float; sigmoid only loses values below 1e-38 from it.
constexpr float kExpLo = -87.0f, kExpHi = 88.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds a float below 2^22 to an integer
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

#if defined(__SSE2__)
// sigmoid of four logits.  NaN stays NaN: minps/maxps return their second operand when either is NaN.
inline __m128 sigmoid4(__m128 logit) {
  const __m128 sign = _mm_set1_ps(-0.0f);
  __m128 z = _mm_xor_ps(logit, sign);  // exp(-logit)
  z = _mm_min_ps(_mm_set1_ps(kExpHi), z);
  z = _mm_max_ps(_mm_set1_ps(kExpLo), z);
  const __m128 t = _mm_add_ps(_mm_mul_ps(z, _mm_set1_ps(kLog2e)), _mm_set1_ps(kRound));
  const __m128 n = _mm_sub_ps(t, _mm_set1_ps(kRound));
  __m128 r = _mm_sub_ps(z, _mm_mul_ps(n, _mm_set1_ps(kLn2Hi)));
  r = _mm_sub_ps(r, _mm_mul_ps(n, _mm_set1_ps(kLn2Lo)));
  __m128 p = _mm_set1_ps(kP0);
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(kP1));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(kP2));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(kP3));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(kP4));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(kP5));
  __m128 y = _mm_add_ps(_mm_add_ps(_mm_mul_ps(p, _mm_mul_ps(r, r)), r), _mm_set1_ps(1.0f));
  const __m128i e = _mm_slli_epi32(
      _mm_add_epi32(_mm_sub_epi32(_mm_castps_si128(t), _mm_castps_si128(_mm_set1_ps(kRound))), _mm_set1_epi32(127)),
      23);
  y = _mm_mul_ps(y, _mm_castsi128_ps(e));
  return _mm_div_ps(_mm_set1_ps(1.0f), _mm_add_ps(_mm_set1_ps(1.0f), y));
}
#endif
#if defined(LLSH_HAVE_AVX2_KERNELS)
// sigmoid4 on eight lanes: the same operations in the same order (no FMA), so bit for bit the same
// values; the AVX2 epilogue mixes both freely.  A copy rather than one template: this one must be
// compiled for AVX2 and sigmoid4 must not (it runs on any x86-64).
LLSH_TARGET_AVX2 inline __m256 sigmoid8(__m256 logit) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 z = _mm256_xor_ps(logit, sign);
  z = _mm256_min_ps(_mm256_set1_ps(kExpHi), z);
  z = _mm256_max_ps(_mm256_set1_ps(kExpLo), z);
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(z, _mm256_set1_ps(kLog2e)), _mm256_set1_ps(kRound));
  const __m256 n = _mm256_sub_ps(t, _mm256_set1_ps(kRound));
  __m256 r = _mm256_sub_ps(z, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Hi)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Lo)));
  __m256 p = _mm256_set1_ps(kP0);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP1));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP2));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP3));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP4));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP5));
  __m256 y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(_mm256_set1_ps(kRound))),
                       _mm256_set1_epi32(127)),
      23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), y));
}
#endif
#if !defined(__SSE2__)
// Portable fallback: the same operations in the same order, one element at a time.
inline float sigmoid1(float logit) {
  float z = -logit;
  z = kExpHi < z ? kExpHi : z;
  z = kExpLo > z ? kExpLo : z;
  const float t = z * kLog2e + kRound;
  const float n = t - kRound;
  float r = z - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kP0;
  p = p * r + kP1;
  p = p * r + kP2;
  p = p * r + kP3;
  p = p * r + kP4;
  p = p * r + kP5;
  float y = (p * (r * r) + r) + 1.0f;
  int32_t ti, ri;
  const float round = kRound;
  std::memcpy(&ti, &t, 4);
  std::memcpy(&ri, &round, 4);
  const uint32_t bits = (uint32_t)(ti - ri + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return 1.0f / (1.0f + y * scale);
}
#endif

// Packs bit i = (c[i] >= 0.5f), four bits per compare + movemask.
inline uint64_t pack_key(const float* c, int64_t n_bits) {
  uint64_t key = 0;
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128 half = _mm_set1_ps(0.5f);
  for (; i + 4 <= n_bits; i += 4)
    key |= (uint64_t)_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(c + i), half)) << i;
#endif
  for (; i < n_bits; ++i) key |= (uint64_t)(c[i] >= 0.5f) << i;
  return key;
}

// The fold of one element; shared by the SSE and the tail path (same rounding).
inline float fold1(float raw, float mean, float wsum, float rstd) { return (raw - mean * wsum) * rstd; }

#if defined(__SSE2__)
// The epilogue of one row from element k on (see hash_epilogue_cpu): fold, then the sigmoid, in
// place; four at a time, the tail through a padded block as in sigmoid_inplace.  Returns whether a
// logit was NaN.
bool fold_row_sse2(float* v, int64_t k, int64_t width, float mu, float rs, const float* wsum, bool with_sigmoid) {
  const __m128 vmu = _mm_set1_ps(mu), vrs = _mm_set1_ps(rs);
  __m128 unord = _mm_setzero_ps();
  for (; k + 4 <= width; k += 4) {
    const __m128 l = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(v + k), _mm_mul_ps(vmu, _mm_loadu_ps(wsum + k))), vrs);
    unord = _mm_or_ps(unord, _mm_cmpunord_ps(l, l));
    _mm_storeu_ps(v + k, with_sigmoid ? sigmoid4(l) : l);
  }
  bool nan_row = _mm_movemask_ps(unord) != 0;
  if (k < width) {
    float buf[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t i = k; i < width; ++i) {
      buf[i - k] = fold1(v[i], mu, wsum[i], rs);
      nan_row |= std::isnan(buf[i - k]);
    }
    if (with_sigmoid) _mm_storeu_ps(buf, sigmoid4(_mm_loadu_ps(buf)));
    std::memcpy(v + k, buf, (width - k) * sizeof(float));
  }
  return nan_row;
}
#endif

#if defined(LLSH_HAVE_AVX2_KERNELS)
// fold_row_sse2 eight at a time, the rest (< 8) through fold_row_sse2: the same values.
LLSH_TARGET_AVX2 bool fold_row_avx2(float* v, int64_t width, float mu, float rs, const float* wsum,
                                    bool with_sigmoid) {
  const __m256 vmu = _mm256_set1_ps(mu), vrs = _mm256_set1_ps(rs);
  __m256 unord = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= width; k += 8) {
    const __m256 l =
        _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v + k), _mm256_mul_ps(vmu, _mm256_loadu_ps(wsum + k))), vrs);
    unord = _mm256_or_ps(unord, _mm256_cmp_ps(l, l, _CMP_UNORD_Q));
    _mm256_storeu_ps(v + k, with_sigmoid ? sigmoid8(l) : l);
  }
  const bool nan_row = _mm256_movemask_ps(unord) != 0;
  return fold_row_sse2(v, k, width, mu, rs, wsum, with_sigmoid) || nan_row;
}
#endif

}  // namespace

void sigmoid_inplace(float* v, int64_t n) {
#if defined(__SSE2__)
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(v + i, sigmoid4(_mm_loadu_ps(v + i)));
  if (i < n) {  // tail through a padded block: the same instructions as every other element
    float buf[4] = {0.f, 0.f, 0.f, 0.f};
    std::memcpy(buf, v + i, (n - i) * sizeof(float));
    _mm_storeu_ps(buf, sigmoid4(_mm_loadu_ps(buf)));
    std::memcpy(v + i, buf, (n - i) * sizeof(float));
  }
#else
  for (int64_t i = 0; i < n; ++i) v[i] = sigmoid1(v[i]);
#endif
}

void binarize_cpu(float* codes, int64_t n_rows, int64_t n_bits, uint64_t* keys, bool from_logits, int n_threads) {
  parallel_for(n_rows, n_threads, [&](int64_t begin, int64_t end) {
    // a block of rows is contiguous: the sigmoid runs over it in one call (element-wise, so
    // identical to row by row), then the keys are packed while the block is in cache
    constexpr int64_t kBlock = 256;
    for (int64_t row = begin; row < end; row += kBlock) {
      const int64_t stop = std::min(end, row + kBlock);
      if (from_logits) sigmoid_inplace(codes + row * n_bits, (stop - row) * n_bits);
      for (int64_t i = row; i < stop; ++i) keys[i] = pack_key(codes + i * n_bits, n_bits);
    }
  }, kMinElementsPerThread / n_bits);
}

// The row is summed in kLanes float32 lanes (element k of the first dim - dim % kLanes goes to lane
// k % kLanes) about a shift; the lanes and the tail are then added in float64 in a fixed order.
// At memory speed: float32 lanes keep up with the read where float64 conversions did not.  Every
// ISA level runs the same lane arithmetic (add, mul, no FMA), so the statistics are bit-identical
// whichever level runs.
namespace {

constexpr int64_t kLanes = 16;

struct LaneSums {
  alignas(32) float sum[kLanes];
  alignas(32) float sq[kLanes];
};

#if defined(LLSH_HAVE_AVX2_KERNELS)
LLSH_TARGET_AVX2 void lane_sums_avx2(const float* v, int64_t n, float shift, LaneSums& out) {
  const __m256 c = _mm256_set1_ps(shift);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), q0 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; k += kLanes) {
    const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(v + k), c), b = _mm256_sub_ps(_mm256_loadu_ps(v + k + 8), c);
    s0 = _mm256_add_ps(s0, a);
    s1 = _mm256_add_ps(s1, b);
    q0 = _mm256_add_ps(q0, _mm256_mul_ps(a, a));
    q1 = _mm256_add_ps(q1, _mm256_mul_ps(b, b));
  }
  _mm256_store_ps(out.sum, s0);
  _mm256_store_ps(out.sum + 8, s1);
  _mm256_store_ps(out.sq, q0);
  _mm256_store_ps(out.sq + 8, q1);
}
#endif

void lane_sums(const float* v, int64_t n, float shift, LaneSums& out) {
#if defined(__SSE2__)
  const __m128 c = _mm_set1_ps(shift);
  __m128 s[4], q[4];
  for (int j = 0; j < 4; ++j) s[j] = q[j] = _mm_setzero_ps();
  for (int64_t k = 0; k < n; k += kLanes)
    for (int j = 0; j < 4; ++j) {
      const __m128 a = _mm_sub_ps(_mm_loadu_ps(v + k + 4 * j), c);
      s[j] = _mm_add_ps(s[j], a);
      q[j] = _mm_add_ps(q[j], _mm_mul_ps(a, a));
    }
  for (int j = 0; j < 4; ++j) {
    _mm_store_ps(out.sum + 4 * j, s[j]);
    _mm_store_ps(out.sq + 4 * j, q[j]);
  }
#else
  for (int64_t j = 0; j < kLanes; ++j) out.sum[j] = out.sq[j] = 0.0f;
  for (int64_t k = 0; k < n; k += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      const float a = v[k + j] - shift;
      out.sum[j] += a;
      out.sq[j] += a * a;
    }
#endif
}

}  // namespace

void row_moments_cpu(const float* x, int64_t n_rows, int64_t dim, double eps, float* mean, float* rstd,
                     int n_threads) {
  const int64_t body = dim - dim % kLanes;
#if defined(LLSH_HAVE_AVX2_KERNELS)
  const bool avx2 = isa_level() >= kIsaAvx2;
#endif
  parallel_for(n_rows, n_threads, [&](int64_t begin, int64_t end) {
    LaneSums lanes;
    // sums of (v - shift) and (v - shift)^2 over the row, lanes then tail, in float64
    auto sums = [&](const float* v, float shift, double& s, double& q) {
#if defined(LLSH_HAVE_AVX2_KERNELS)
      if (avx2) lane_sums_avx2(v, body, shift, lanes);
      else
#endif
        lane_sums(v, body, shift, lanes);
      s = q = 0.0;
      for (int64_t j = 0; j < kLanes; ++j) {
        s += lanes.sum[j];
        q += lanes.sq[j];
      }
      for (int64_t k = body; k < dim; ++k) {
        const double a = (double)v[k] - (double)shift;
        s += a;
        q += a * a;
      }
    };
    for (int64_t row = begin; row < end; ++row) {
      const float* v = x + row * dim;
      // Two passes, the second over a row still in cache (one read of x from memory): the mean
      // of the row shifted by its first element, then the squares about that mean, so the
      // variance never comes from the difference of two large sums (an outlier at v[0] or a
      // large common offset would otherwise cost precision).
      double s, q;
      sums(v, v[0], s, q);
      const float centre = (float)((double)v[0] + s / (double)dim);
      sums(v, centre, s, q);
      const double mu = s / (double)dim;  // of the row about `centre`: small
      double var = q / (double)dim - mu * mu;
      const double mean_row = (double)centre + mu;
      // NaN/Inf anywhere, or a float32 LayerNorm variance that would overflow: NaN statistics, so
      // the row's logits are NaN and the caller rejects it
      if (!(std::fabs(mean_row) <= (double)FLT_MAX && q <= (double)FLT_MAX && std::isfinite(s))) {
        mean[row] = rstd[row] = NAN;
        continue;
      }
      var = var > 0.0 ? var : 0.0;
      mean[row] = (float)mean_row;
      rstd[row] = (float)(1.0 / std::sqrt(var + eps));
    }
  }, kMinElementsPerThread / dim);
}

int64_t hash_epilogue_cpu(float* raw, int64_t n_rows, int64_t n_tables, int64_t n_bits, const float* mean,
                          const float* rstd, const float* wsum, bool with_sigmoid, uint64_t* keys, int n_threads,
                          float* table_codes, uint64_t* table_keys, int64_t n_total, int64_t row0) {
  const int64_t width = n_tables * n_bits;
  std::atomic<int64_t> first_bad{-1};
  const bool avx2 = isa_level() >= kIsaAvx2;
  (void)avx2;
  parallel_for(n_rows, n_threads, [&](int64_t begin, int64_t end) {
    int64_t bad = -1;
    for (int64_t row = begin; row < end; ++row) {
      float* v = raw + row * width;
      const float mu = mean[row], rs = rstd[row];
      bool nan_row = false;
#if defined(LLSH_HAVE_AVX2_KERNELS)
      if (avx2) nan_row = fold_row_avx2(v, width, mu, rs, wsum, with_sigmoid);
      else
#endif
#if defined(__SSE2__)
        nan_row = fold_row_sse2(v, 0, width, mu, rs, wsum, with_sigmoid);
#else
      for (int64_t k = 0; k < width; ++k) {
        const float l = fold1(v[k], mu, wsum[k], rs);
        nan_row |= std::isnan(l);
        v[k] = with_sigmoid ? sigmoid1(l) : l;
      }
#endif
      if (nan_row && bad < 0) bad = row;
      if (with_sigmoid)
        for (int64_t j = 0; j < n_tables; ++j) {
          const uint64_t key = pack_key(v + j * n_bits, n_bits);
          keys[row * n_tables + j] = key;
          if (table_keys) table_keys[j * n_total + row0 + row] = key;
          if (table_codes)
            std::memcpy(table_codes + (j * n_total + row0 + row) * n_bits, v + j * n_bits, n_bits * sizeof(float));
        }
    }
    if (bad >= 0) {  // keep the smallest bad row over all workers
      int64_t cur = first_bad.load();
      while ((cur < 0 || bad < cur) && !first_bad.compare_exchange_weak(cur, bad)) {
      }
    }
  }, kMinElementsPerThread / width);
  return first_bad.load();
}

}  // namespace llsh
