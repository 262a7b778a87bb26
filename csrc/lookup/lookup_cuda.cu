// lookup_cuda: device twin of lookup_cpu.
//
// lookup_warp_kernel   one warp per (query, table) pair (grid-stride): binary search of the key with
//                      llsh::find_key (hand-written in sorted_tables.h, a device function; no thrust::lower_bound,
//                      NVIDIA/thrust#1734), then
//                        mean    : lanes in groups of G (G = next pow2 >= r/4, so <= 4 components per
//                                  lane, coalesced along the row), 32/G rows per step and two steps in
//                                  flight; per row the squared distance is reduced over the group with
//                                  shuffles, sqrt'ed and summed in float64; a bucket of more than
//                                  kLookupBigBucket rows is queued for lookup_big_kernel instead;
//                        light   : ||q - sum/count|| in float64 over r lanes;
//                        squared : ||q||^2 - 2 q.sum/count + sqnorm/count, clamped >= 0.
// lookup_big_kernel    one block per queued (query, big bucket): the same row loop split over the
//                      block's warps, then a fixed-order reduction (deterministic).
// lookup_min_kernel    optional min over the b tables of each query.
// Optional partial outputs (out_sum, out_count) get what lookup_cpu's do: per (query, table) the float64
// sum of the distances (the mean mode's accumulator itself) and the bucket size, 0 and 0 on a miss.
#include "lookup.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace llsh {

namespace {

constexpr int kThreads = 256;   // warp kernel: 8 pairs in flight per block
constexpr int kBigThreads = 512;  // big-bucket kernel: 16 warps per pair
constexpr int kBigWarps = kBigThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr size_t kListOffset = 256;  // temp: [0, 8) queue length, [256, ...) queue of (pair, bucket)

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("llsh lookup_cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

__device__ __forceinline__ float ld_code(const float* p) { return __ldg(p); }
__device__ __forceinline__ float ld_code(const uint16_t* p) { return __half2float(__ushort_as_half(__ldg(p))); }

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;  // lane 0's value is the one used (lanes may differ in the last bits)
}

template <typename CodeT>
struct Params {
  TablesView<CodeT> t;
  const float* q = nullptr;       // [n_pairs, r]
  const uint64_t* qk = nullptr;   // [n_pairs]
  int64_t n_pairs = 0;
  int mode = 0;
  float miss = 0.f;
  float* out = nullptr;           // [n_pairs]
  int64_t* visited = nullptr;     // [n_pairs] or null
  double* psum = nullptr;         // [n_pairs] or null: count * distance (float64)
  int64_t* pcount = nullptr;      // [n_pairs] or null: bucket size (0 on a miss)
  unsigned long long* big_count = nullptr;
  int64_t* big_list = nullptr;    // [2 * n_pairs]: (pair, bucket)
};

// Query components of this lane: k = sub + G*t, t < 4 (zero beyond r).
template <int G>
__device__ __forceinline__ void load_query(const float* __restrict__ qp, int r, int lane, float (&q)[4]) {
  const int sub = lane & (G - 1);
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const int k = sub + G * t;
    q[t] = k < r ? qp[k] : 0.f;
  }
}

// This lane's share of sum over rows [row0, row1) of ||q - c_row|| (L2, not squared).  The rows are
// split among n_warps warps (warp_rank = this warp); every lane of the warp must call it.
template <int G, typename CodeT>
__device__ __forceinline__ double mean_partial(const CodeT* __restrict__ codes, int r, const float (&q)[4],
                                               int64_t row0, int64_t row1, int warp_rank, int n_warps, int lane) {
  constexpr int kRows = 32 / G;
  const int sub = lane & (G - 1), grp = lane / G;
  const int64_t step = (int64_t)kRows * n_warps;
  double acc = 0.0;
  for (int64_t base = row0 + (int64_t)warp_rank * kRows; base < row1; base += 2 * step) {  // warp-uniform
    const int64_t ra = base + grp, rb = base + step + grp;
    const bool va = ra < row1, vb = rb < row1;
    float da = 0.f, db = 0.f;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int k = sub + G * t;
      if (k < r) {
        if (va) {
          const float d = q[t] - ld_code(codes + ra * r + k);
          da = fmaf(d, d, da);
        }
        if (vb) {
          const float d = q[t] - ld_code(codes + rb * r + k);
          db = fmaf(d, d, db);
        }
      }
    }
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) {
      da += __shfl_xor_sync(kFull, da, o);
      db += __shfl_xor_sync(kFull, db, o);
    }
    if (sub == 0) {
      if (va) acc += sqrt((double)da);  // root in double, as the CPU engine does
      if (vb) acc += sqrt((double)db);
    }
  }
  return acc;
}

template <int G, typename CodeT>
__global__ void __launch_bounds__(kThreads) lookup_warp_kernel(const Params<CodeT> p) {
  const int lane = threadIdx.x & 31;
  const int64_t n_warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  const int64_t b = p.t.n_tables;
  const int r = (int)p.t.n_bits;
  for (int64_t pair = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; pair < p.n_pairs; pair += n_warps) {
    const int64_t j = pair % b;
    const int64_t u = find_key(p.t.keys, p.t.table_start[j], p.t.table_start[j + 1], p.qk[pair]);
    if (u < 0) {
      if (lane == 0) {
        p.out[pair] = p.miss;
        if (p.visited) p.visited[pair] = 0;
        if (p.psum) p.psum[pair] = 0.0;
        if (p.pcount) p.pcount[pair] = 0;
      }
      continue;
    }
    const int64_t row0 = p.t.offsets[u], row1 = p.t.offsets[u + 1];
    const int64_t count = row1 - row0;
    const float* qp = p.q + pair * r;
    if (p.mode == 0) {
      if (count > kLookupBigBucket) {  // a whole block will do it
        if (lane == 0) {
          const unsigned long long slot = atomicAdd(p.big_count, 1ull);
          p.big_list[2 * slot] = pair;
          p.big_list[2 * slot + 1] = u;
        }
        continue;
      }
      float q[4];
      load_query<G>(qp, r, lane, q);
      const double acc = warp_sum(mean_partial<G>(p.t.codes, r, q, row0, row1, 0, 1, lane));
      if (lane == 0) {
        p.out[pair] = (float)(acc / (double)count);
        if (p.visited) p.visited[pair] = count;
        if (p.psum) p.psum[pair] = acc;  // the sum itself: no divide-then-multiply rounding
        if (p.pcount) p.pcount[pair] = count;
      }
    } else {
      const double* sum = p.t.bucket_sum + u * r;
      const double cnt = (double)count;
      double a = 0.0, c = 0.0;
      for (int k = lane; k < r; k += 32) {
        const double qv = (double)qp[k];
        if (p.mode == 1) {
          const double d = qv - sum[k] / cnt;
          a += d * d;
        } else {
          a += qv * qv;
          c += qv * sum[k];
        }
      }
      a = warp_sum(a);
      c = warp_sum(c);
      if (lane == 0) {
        double v;
        if (p.mode == 1) {
          v = sqrt(a);
        } else {
          const double m = a - 2.0 * c / cnt + p.t.bucket_sqnorm[u] / cnt;
          v = m > 0.0 ? m : 0.0;
        }
        p.out[pair] = (float)v;
        if (p.visited) p.visited[pair] = 1;
        if (p.psum) p.psum[pair] = v * cnt;  // as lookup_cpu: count * the float64 distance
        if (p.pcount) p.pcount[pair] = count;
      }
    }
  }
}

template <int G, typename CodeT>
__global__ void __launch_bounds__(kBigThreads) lookup_big_kernel(const Params<CodeT> p) {
  __shared__ double sh[kBigWarps];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int r = (int)p.t.n_bits;
  const int64_t n_big = (int64_t)*p.big_count;
  for (int64_t e = blockIdx.x; e < n_big; e += gridDim.x) {  // block-uniform
    const int64_t pair = p.big_list[2 * e], u = p.big_list[2 * e + 1];
    const int64_t row0 = p.t.offsets[u], row1 = p.t.offsets[u + 1];
    float q[4];
    load_query<G>(p.q + pair * r, r, lane, q);
    const double acc = warp_sum(mean_partial<G>(p.t.codes, r, q, row0, row1, w, nw, lane));
    if (lane == 0) sh[w] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      double total = 0.0;
      for (int i = 0; i < nw; ++i) total += sh[i];
      p.out[pair] = (float)(total / (double)(row1 - row0));
      if (p.visited) p.visited[pair] = row1 - row0;
      if (p.psum) p.psum[pair] = total;
      if (p.pcount) p.pcount[pair] = row1 - row0;
    }
    __syncthreads();  // sh is reused by the next pair
  }
}

// A NaN distance (a NaN query code) makes the row's min NaN, as numpy's min and torch.min over the
// [M, b] output do (fminf would skip it and return another table's distance).
__global__ void lookup_min_kernel(const float* __restrict__ out, int64_t m, int64_t b, float* __restrict__ out_min) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < m; i += (int64_t)gridDim.x * blockDim.x) {
    const float* row = out + i * b;
    float v = row[0];
    for (int64_t j = 1; j < b && !isnan(v); ++j) {
      const float x = row[j];
      if (x < v || isnan(x)) v = x;
    }
    out_min[i] = v;
  }
}

template <int G, typename CodeT>
void launch(const Params<CodeT>& p, int sms, cudaStream_t s) {
  const int64_t want = (p.n_pairs + kThreads / 32 - 1) / (kThreads / 32);
  const int blocks = (int)std::max<int64_t>(1, std::min<int64_t>(want, (int64_t)sms * 32));
  lookup_warp_kernel<G, CodeT><<<blocks, kThreads, 0, s>>>(p);
  check(cudaGetLastError(), "lookup_warp_kernel launch");
  if (p.mode == 0) {
    const int big_blocks = (int)std::max<int64_t>(1, std::min<int64_t>(p.n_pairs, (int64_t)sms * 4));
    lookup_big_kernel<G, CodeT><<<big_blocks, kBigThreads, 0, s>>>(p);
    check(cudaGetLastError(), "lookup_big_kernel launch");
  }
}

}  // namespace

uint64_t lookup_cuda_temp_bytes(int64_t n_queries, int64_t n_tables) {
  if (n_queries < 0 || n_tables < 0) throw std::invalid_argument("lookup_cuda_temp_bytes: negative size");
  return kListOffset + (size_t)n_queries * (size_t)n_tables * 2 * sizeof(int64_t);
}

template <typename CodeT>
void lookup_cuda(const TablesView<CodeT>& t, const float* query_codes, const uint64_t* query_keys, int64_t n_queries,
                 Mode mode, float miss_value, float* out, float* out_min, int64_t* visited, double* out_sum,
                 int64_t* out_count, void* temp, uint64_t temp_bytes, void* stream) {
  const int m = static_cast<int>(mode);
  if (m < 0 || m > 2) throw std::invalid_argument("lookup_cuda: mode must be 0 (mean), 1 (light) or 2 (squared)");
  if (t.n_bits < 1 || t.n_bits > 64) throw std::invalid_argument("lookup_cuda: n_bits must be 1..64");
  if (t.n_tables < 1) throw std::invalid_argument("lookup_cuda: n_tables must be >= 1");
  if (n_queries < 0) throw std::invalid_argument("lookup_cuda: n_queries must be >= 0");
  if (mode == Mode::kMean && !t.codes)
    throw std::invalid_argument("lookup_cuda: mode 'mean' needs the per-item codes; this index keeps statistics only");
  const int64_t n_pairs = n_queries * t.n_tables;
  if (n_pairs == 0) return;
  const uint64_t need = lookup_cuda_temp_bytes(n_queries, t.n_tables);
  if (!temp || temp_bytes < need)
    throw std::invalid_argument("lookup_cuda: temp has " + std::to_string(temp_bytes) + " bytes, needs " +
                                std::to_string(need));
  if (!t.table_start || !t.offsets || !t.bucket_sum || !t.bucket_sqnorm || !query_codes || !query_keys || !out)
    throw std::invalid_argument("lookup_cuda: null pointer");
  auto s = static_cast<cudaStream_t>(stream);
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  sms = std::max(sms, 1);

  Params<CodeT> p;
  p.t = t;
  p.q = query_codes;
  p.qk = query_keys;
  p.n_pairs = n_pairs;
  p.mode = m;
  p.miss = miss_value;
  p.out = out;
  p.visited = visited;
  p.psum = out_sum;
  p.pcount = out_count;
  p.big_count = static_cast<unsigned long long*>(temp);
  p.big_list = reinterpret_cast<int64_t*>(static_cast<char*>(temp) + kListOffset);
  check(cudaMemsetAsync(p.big_count, 0, sizeof(unsigned long long), s), "cudaMemsetAsync");

  const int64_t r = t.n_bits;
  if (r <= 4) launch<1>(p, sms, s);
  else if (r <= 8) launch<2>(p, sms, s);
  else if (r <= 16) launch<4>(p, sms, s);
  else if (r <= 32) launch<8>(p, sms, s);
  else launch<16>(p, sms, s);

  if (out_min) {
    const int blocks = (int)std::max<int64_t>(1, std::min<int64_t>((n_queries + kThreads - 1) / kThreads, sms * 32));
    lookup_min_kernel<<<blocks, kThreads, 0, s>>>(out, n_queries, t.n_tables, out_min);
    check(cudaGetLastError(), "lookup_min_kernel launch");
  }
}

template void lookup_cuda<float>(const TablesView<float>&, const float*, const uint64_t*, int64_t, Mode, float, float*,
                                 float*, int64_t*, double*, int64_t*, void*, uint64_t, void*);
template void lookup_cuda<uint16_t>(const TablesView<uint16_t>&, const float*, const uint64_t*, int64_t, Mode, float,
                                    float*, float*, int64_t*, double*, int64_t*, void*, uint64_t, void*);

}  // namespace llsh
