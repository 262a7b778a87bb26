#include "lookup.h"

#include <atomic>
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

}  // namespace

template <typename CodeT>
void lookup_cpu(const TablesView<CodeT>& t, const float* query_codes, const uint64_t* query_keys,
                int64_t n_queries, Mode mode, float miss_value, float* out, int64_t* n_compared,
                int n_threads, double* out_sum, int64_t* out_count) {
  const int64_t b = t.n_tables, r = t.n_bits;
  std::atomic<int64_t> visited{0};
  parallel_for(n_queries, n_threads, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t j = 0; j < b; ++j) {
        const float* q = query_codes + (m * b + j) * r;
        const int64_t u = find_key(t.keys, t.table_start[j], t.table_start[j + 1], query_keys[m * b + j]);
        if (u < 0) {
          out[m * b + j] = miss_value;
          if (out_sum) out_sum[m * b + j] = 0.0;
          if (out_count) out_count[m * b + j] = 0;
          continue;
        }
        const double dist = bucket_distance(t, u, q, mode);
        out[m * b + j] = (float)dist;
        const int64_t count = t.offsets[u + 1] - t.offsets[u];
        if (out_sum) out_sum[m * b + j] = dist * (double)count;
        if (out_count) out_count[m * b + j] = count;
        local += mode == Mode::kMean ? t.offsets[u + 1] - t.offsets[u] : 1;
      }
    }
    visited += local;
  });
  if (n_compared) *n_compared = visited.load();
}

template void lookup_cpu<float>(const TablesView<float>&, const float*, const uint64_t*, int64_t, Mode, float,
                                float*, int64_t*, int, double*, int64_t*);
template void lookup_cpu<uint16_t>(const TablesView<uint16_t>&, const float*, const uint64_t*, int64_t, Mode,
                                   float, float*, int64_t*, int, double*, int64_t*);

}  // namespace llsh
