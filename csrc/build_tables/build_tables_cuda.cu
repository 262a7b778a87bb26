// build_tables_cuda: device twin of build_tables_cpu, producing the same flat sorted layout
// (llsh/sorted_tables.h) bit for bit (keys, table_start, offsets, ids, codes) and the same bucket
// statistics up to float64 summation order.
//
// Phase 1 (build_tables_cuda_sort)
//   validate   one pass: are ids strictly ascending inside each table?  any key bit >= n_bits?
//   sort       per table, cub::DeviceRadixSort::SortPairs (stable LSD radix sort) of row indices:
//                (a) only when ids are not ascending: by id (all 64 bits, signed order),
//                (b) by key over bits [0, n_bits).
//              Stability makes the order (key, id) within each table, exactly the CPU order.
//   segment    per table, cub::DeviceRunLengthEncode::Encode of the sorted keys: unique keys and
//              run lengths at the table's worst-case position j * n, and the table's bucket count.
//              The b counts go to the host (the only data that does): U = their sum.
// Phase 2 (build_tables_cuda_finish), once the caller has allocated outputs for U buckets
//   compact    table_start = exclusive scan of the per-table counts; unique keys and run lengths
//              move to table_start[j] + i;
//   offsets    cub::DeviceScan::ExclusiveSum of the run lengths, offsets[U] = b * n.
//   gather     ids and codes into bucket order (vectorised row copies).
//   stats      one warp per (bucket, chunk of kChunk rows), float64 sums of codes and of squared
//              norms; chunk 0 goes straight to the outputs, later chunks of big buckets go to
//              partial slots (indexed by an inclusive scan of the per-bucket extra-chunk counts) and
//              are added in chunk order: deterministic, no atomics, no single-warp giant buckets.
#include "build_tables.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#include <thrust/iterator/transform_iterator.h>

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

namespace llsh {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int64_t kChunk = 256;  // rows per warp task in the statistics kernels
constexpr size_t kAlign = 256;
constexpr unsigned kFull = 0xffffffffu;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error
    throw std::runtime_error(std::string("llsh build_tables_cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

int sm_count() {
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return std::max(sms, 1);
}

// Grid for a grid-stride loop over `work` units of `per_block` each, capped at a few waves.
int grid_for(int64_t work, int64_t per_block, int sms) {
  const int64_t want = (work + per_block - 1) / per_block;
  return (int)std::max<int64_t>(1, std::min<int64_t>(want, (int64_t)sms * 32));
}

__device__ __forceinline__ double to_double(float v) { return (double)v; }
__device__ __forceinline__ double to_double(uint16_t v) { return (double)__half2float(__ushort_as_half(v)); }

__device__ __forceinline__ int64_t global_thread() { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return (int64_t)gridDim.x * blockDim.x; }

struct ExtraChunks {  // chunks after the first one of a bucket of c >= 1 rows
  __host__ __device__ int64_t operator()(int64_t c) const { return (c - 1) / kChunk; }
};

using ExtraIter = thrust::transform_iterator<ExtraChunks, const int64_t*>;

// Every CUB call goes through one of these, so the size query and the run use identical types.
cudaError_t sort_by_key(void* tmp, size_t& bytes, cub::DoubleBuffer<uint64_t>& k, cub::DoubleBuffer<int64_t>& v,
                        int n, int end_bit, cudaStream_t s) {
  return cub::DeviceRadixSort::SortPairs(tmp, bytes, k, v, n, 0, end_bit, s);
}
cudaError_t sort_by_id(void* tmp, size_t& bytes, cub::DoubleBuffer<int64_t>& k, cub::DoubleBuffer<int64_t>& v,
                       int n, cudaStream_t s) {
  return cub::DeviceRadixSort::SortPairs(tmp, bytes, k, v, n, 0, 64, s);
}
cudaError_t encode_runs(void* tmp, size_t& bytes, const uint64_t* sorted_keys, uint64_t* unique_keys,
                        int64_t* counts, int64_t* n_runs, int n, cudaStream_t s) {
  return cub::DeviceRunLengthEncode::Encode(tmp, bytes, sorted_keys, unique_keys, counts, n_runs, n, s);
}
cudaError_t scan_offsets(void* tmp, size_t& bytes, const int64_t* counts, int64_t* offsets, int u, cudaStream_t s) {
  return cub::DeviceScan::ExclusiveSum(tmp, bytes, counts, offsets, u, s);
}
cudaError_t scan_extra(void* tmp, size_t& bytes, const int64_t* counts, int64_t* extra_end, int u, cudaStream_t s) {
  return cub::DeviceScan::InclusiveSum(tmp, bytes, ExtraIter(counts, ExtraChunks{}), extra_end, u, s);
}

// Scratch layout, identical for both phases (a pure function of b, n, r and the device).
struct Layout {
  size_t perm[2] = {0, 0};   // int64 [bn] x 2: row permutation double buffer
  size_t key[2] = {0, 0};    // uint64 [bn] x 2: key (or id) double buffer, then unique keys / scans
  size_t counts = 0;         // int64 [bn]: run lengths, table j's at j * n
  size_t partials = 0;       // double [n_partials, r + 1]
  size_t runs = 0;           // int64 [b]: buckets per table
  size_t flags = 0;          // int [2]: validation flags
  size_t cub = 0;
  size_t cub_bytes = 0;
  size_t total = 0;
  int64_t n_partials = 0;
};

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

void check_sizes(int64_t b, int64_t n, int64_t r) {
  if (b < 0 || n < 0) throw std::invalid_argument("build_tables_cuda: n_tables and n must be >= 0");
  if (r < 1 || r > 64) throw std::invalid_argument("build_tables_cuda: n_bits must be 1..64");
  if (n > 0 && b > (int64_t)INT_MAX / n)
    throw std::invalid_argument("build_tables_cuda: n_tables * n must be < 2^31 rows (got " + std::to_string(b) +
                                " x " + std::to_string(n) + ")");
}

Layout make_layout(int64_t b, int64_t n, int64_t r) {
  check_sizes(b, n, r);
  Layout l;
  const int64_t bn = b * n;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off = align_up(off + bytes);
    return at;
  };
  const size_t rows8 = (size_t)bn * 8;
  l.perm[0] = take(rows8);
  l.perm[1] = take(rows8);
  l.key[0] = take(rows8);
  l.key[1] = take(rows8);
  l.counts = take(rows8);
  l.n_partials = bn / kChunk + 1;
  l.partials = take((size_t)l.n_partials * (size_t)(r + 1) * sizeof(double));
  l.runs = take((size_t)b * 8);
  l.flags = take(2 * sizeof(int));
  size_t cub_bytes = 0;
  if (bn > 0) {
    size_t t = 0;
    cub::DoubleBuffer<uint64_t> kd;
    cub::DoubleBuffer<int64_t> id, vd;
    check(sort_by_key(nullptr, t, kd, vd, (int)n, (int)r, 0), "radix sort size (keys)");
    cub_bytes = std::max(cub_bytes, t);
    check(sort_by_id(nullptr, t, id, vd, (int)n, 0), "radix sort size (ids)");
    cub_bytes = std::max(cub_bytes, t);
    check(encode_runs(nullptr, t, nullptr, nullptr, nullptr, nullptr, (int)n, 0), "run-length encode size");
    cub_bytes = std::max(cub_bytes, t);
    check(scan_offsets(nullptr, t, nullptr, nullptr, (int)bn, 0), "scan size");
    cub_bytes = std::max(cub_bytes, t);
    check(scan_extra(nullptr, t, nullptr, nullptr, (int)bn, 0), "scan size");
    cub_bytes = std::max(cub_bytes, t);
  }
  l.cub_bytes = std::max<size_t>(cub_bytes, 1);
  l.cub = take(l.cub_bytes);
  l.total = off;
  return l;
}

template <typename T>
T* at(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

// ---------------------------------------------------------------------------------------------
// Kernels.

// flags[0] = 1 if some table's ids are not strictly ascending; flags[1] = 1 if a key has a bit >= r.
__global__ void validate_kernel(const uint64_t* __restrict__ keys, const int64_t* __restrict__ ids, int64_t bn,
                                int64_t n, int r, int* flags) {
  bool unsorted = false, wide = false;
  for (int64_t i = global_thread(); i < bn; i += grid_threads()) {
    if (r < 64 && (keys[i] >> r) != 0) wide = true;
    if (i % n != 0 && !(ids[i - 1] < ids[i])) unsorted = true;
  }
  if (unsorted) flags[0] = 1;  // benign race: every writer stores 1
  if (wide) flags[1] = 1;
}

__global__ void iota_kernel(int64_t* __restrict__ perm, int64_t bn) {
  for (int64_t i = global_thread(); i < bn; i += grid_threads()) perm[i] = i;
}

__global__ void gather_keys_kernel(const uint64_t* __restrict__ keys, const int64_t* __restrict__ perm,
                                   uint64_t* __restrict__ out, int64_t bn) {
  for (int64_t i = global_thread(); i < bn; i += grid_threads()) out[i] = keys[perm[i]];
}

__global__ void gather_ids_kernel(const int64_t* __restrict__ ids, const int64_t* __restrict__ perm,
                                  int64_t* __restrict__ out, int64_t bn) {
  for (int64_t i = global_thread(); i < bn; i += grid_threads()) out[i] = ids[perm[i]];
}

// out row i = in row perm[i], rows of `wpr` words of type W.
template <typename W>
__global__ void gather_rows_kernel(const W* __restrict__ in, const int64_t* __restrict__ perm, W* __restrict__ out,
                                   int64_t bn, int64_t wpr) {
  const int64_t total = bn * wpr;
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const int64_t row = e / wpr;
    const int64_t w = e - row * wpr;
    out[e] = in[perm[row] * wpr + w];
  }
}

// table_start = exclusive scan of the per-table bucket counts (b is small: one thread);
// offsets[U] = b * n.
__global__ void table_start_kernel(const int64_t* __restrict__ runs, int64_t b, int64_t n,
                                   int64_t* __restrict__ table_start, int64_t* __restrict__ offsets) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t acc = 0;
  for (int64_t j = 0; j < b; ++j) {
    table_start[j] = acc;
    acc += runs[j];
  }
  table_start[b] = acc;
  offsets[acc] = b * n;
}

// Table j's unique keys and run lengths, written by its encode at j * n, move to table_start[j].
__global__ void compact_kernel(const uint64_t* __restrict__ unique_keys, const int64_t* __restrict__ counts,
                               const int64_t* __restrict__ runs, const int64_t* __restrict__ table_start, int64_t bn,
                               int64_t n, uint64_t* __restrict__ keys_out, int64_t* __restrict__ counts_out) {
  for (int64_t e = global_thread(); e < bn; e += grid_threads()) {
    const int64_t j = e / n, i = e - j * n;
    if (i < runs[j]) {
      keys_out[table_start[j] + i] = unique_keys[e];
      counts_out[table_start[j] + i] = counts[e];
    }
  }
}

// Sums of rows [row0, row1) of bucket order (through `perm` when the codes are not gathered):
// dst_sum[k] = sum of component k, *dst_sq = sum of squared norms, both float64.  Called by a whole
// warp.  r <= 32: floor(32 / r) rows per step, lane = (row slot, component); r > 32: one row per
// step, lane holds components lane and lane + 32.  sh: 32 doubles of this warp's shared memory.
template <typename CodeT>
__device__ void chunk_stats(const CodeT* __restrict__ codes, const int64_t* __restrict__ perm, int64_t row0,
                            int64_t row1, int r, int lane, double* sh, double* dst_sum, double* dst_sq) {
  const int per = r <= 32 ? 32 / r : 1;
  const int sub = r <= 32 ? lane / r : 0;
  const int k0 = r <= 32 ? lane - sub * r : lane;
  const int k1 = lane + 32;
  const bool has_k1 = k1 < r;
  double a0 = 0.0, a1 = 0.0, sq = 0.0;
  if (sub < per) {
    for (int64_t row = row0 + sub; row < row1; row += per) {
      const int64_t src = perm ? perm[row] : row;
      const CodeT* c = codes + src * r;
      const double v = to_double(c[k0]);
      a0 += v;
      sq += v * v;
      if (has_k1) {
        const double w = to_double(c[k1]);
        a1 += w;
        sq += w * w;
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(kFull, sq, o);
  if (per > 1) {  // add the row slots of each component, in slot order
    sh[lane] = a0;
    __syncwarp();
    if (lane < r) {
      double t = 0.0;
      for (int p = 0; p < per; ++p) t += sh[p * r + lane];
      a0 = t;
    }
    __syncwarp();
  }
  if (lane < r) dst_sum[lane] = a0;
  if (has_k1) dst_sum[k1] = a1;
  if (lane == 0) *dst_sq = sq;
}

// Chunk 0 of every bucket, straight into the outputs.  One warp per bucket (grid-stride).
template <typename CodeT>
__global__ void __launch_bounds__(kThreads) stats_first_kernel(const CodeT* __restrict__ codes,
                                                               const int64_t* __restrict__ perm,
                                                               const int64_t* __restrict__ offsets, int64_t n_unique,
                                                               int r, double* __restrict__ bucket_sum,
                                                               double* __restrict__ bucket_sqnorm) {
  __shared__ double sh[kWarpsPerBlock][32];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int64_t n_warps = grid_threads() >> 5;
  for (int64_t u = global_thread() >> 5; u < n_unique; u += n_warps) {
    const int64_t row0 = offsets[u];
    const int64_t row1 = min(offsets[u + 1], row0 + kChunk);
    chunk_stats(codes, perm, row0, row1, r, lane, sh[wib], bucket_sum + u * r, bucket_sqnorm + u);
  }
}

// Chunks 1.. of buckets with more than kChunk rows, into partial slots.  extra_end: inclusive scan
// of the per-bucket extra chunk counts; slot e belongs to the bucket u with extra_end[u-1] <= e <
// extra_end[u].
template <typename CodeT>
__global__ void __launch_bounds__(kThreads) stats_extra_kernel(const CodeT* __restrict__ codes,
                                                               const int64_t* __restrict__ perm,
                                                               const int64_t* __restrict__ offsets,
                                                               const int64_t* __restrict__ extra_end,
                                                               int64_t n_unique, int r,
                                                               double* __restrict__ partials) {
  __shared__ double sh[kWarpsPerBlock][32];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const int64_t n_warps = grid_threads() >> 5;
  const int64_t n_extra = extra_end[n_unique - 1];
  for (int64_t e = global_thread() >> 5; e < n_extra; e += n_warps) {
    int64_t lo = 0, hi = n_unique;  // first u with extra_end[u] > e
    while (lo < hi) {
      const int64_t mid = lo + ((hi - lo) >> 1);
      if (extra_end[mid] <= e) lo = mid + 1; else hi = mid;
    }
    const int64_t u = lo;
    const int64_t first = u ? extra_end[u - 1] : 0;
    const int64_t chunk = e - first + 1;
    const int64_t row0 = offsets[u] + chunk * kChunk;
    const int64_t row1 = min(offsets[u + 1], row0 + kChunk);
    double* dst = partials + e * (int64_t)(r + 1);
    chunk_stats(codes, perm, row0, row1, r, lane, sh[wib], dst, dst + r);
  }
}

// bucket_sum/bucket_sqnorm of buckets with extra chunks += their partial slots, in chunk order.
// One warp per 32 consecutive buckets: a ballot finds the ones with extra chunks.
__global__ void __launch_bounds__(kThreads) combine_kernel(const int64_t* __restrict__ extra_end, int64_t n_unique,
                                                           int r, const double* __restrict__ partials,
                                                           double* __restrict__ bucket_sum,
                                                           double* __restrict__ bucket_sqnorm) {
  const int lane = threadIdx.x & 31;
  const int64_t n_warps = grid_threads() >> 5;
  for (int64_t g = (global_thread() >> 5) * 32; g < n_unique; g += n_warps * 32) {
    const int64_t u = g + lane;
    int64_t first = 0, last = 0;
    if (u < n_unique) {
      first = u ? extra_end[u - 1] : 0;
      last = extra_end[u];
    }
    unsigned todo = __ballot_sync(kFull, last > first);
    while (todo) {
      const int src = __ffs(todo) - 1;
      todo &= todo - 1;
      const int64_t bu = g + src;
      const int64_t e0 = __shfl_sync(kFull, first, src), e1 = __shfl_sync(kFull, last, src);
      for (int k = lane; k <= r; k += 32) {  // k == r: the squared norm
        double* dst = k < r ? bucket_sum + bu * r + k : bucket_sqnorm + bu;
        double acc = *dst;
        for (int64_t e = e0; e < e1; ++e) acc += partials[e * (int64_t)(r + 1) + k];
        *dst = acc;
      }
    }
  }
}

// Sorts rows j*n .. (j+1)*n of every table by the key in kbuf (end_bit bits), carrying perm.
// Input in kbuf[0] / pbuf[0]; returns through k_sel / p_sel which buffer holds the result.
template <typename K, typename SortFn>
void sort_tables(K* kbuf0, K* kbuf1, int64_t* pbuf0, int64_t* pbuf1, int64_t b, int64_t n, void* cub_tmp,
                 size_t cub_bytes, cudaStream_t s, SortFn sort, int& k_sel, int& p_sel) {
  K* kb[2] = {kbuf0, kbuf1};
  int64_t* pb[2] = {pbuf0, pbuf1};
  for (int64_t j = 0; j < b; ++j) {
    cub::DoubleBuffer<K> kd(kb[0] + j * n, kb[1] + j * n);
    cub::DoubleBuffer<int64_t> pd(pb[0] + j * n, pb[1] + j * n);
    size_t bytes = cub_bytes;
    check(sort(cub_tmp, bytes, kd, pd), "cub::DeviceRadixSort::SortPairs");
    const int kj = kd.Current() == kb[0] + j * n ? 0 : 1;
    const int pj = pd.Current() == pb[0] + j * n ? 0 : 1;
    if (j == 0) {
      k_sel = kj;
      p_sel = pj;
      continue;
    }
    // Same sizes give the same number of passes, so this never copies in practice.
    if (kj != k_sel)
      check(cudaMemcpyAsync(kb[k_sel] + j * n, kb[kj] + j * n, n * sizeof(K), cudaMemcpyDeviceToDevice, s),
            "cudaMemcpyAsync");
    if (pj != p_sel)
      check(cudaMemcpyAsync(pb[p_sel] + j * n, pb[pj] + j * n, n * sizeof(int64_t), cudaMemcpyDeviceToDevice, s),
            "cudaMemcpyAsync");
  }
}

template <typename CodeT>
void check_args(const CudaBuildArgs<CodeT>& a, const Layout& l) {
  if (!a.temp && l.total > 0) throw std::invalid_argument("build_tables_cuda: temp is null");
  if (a.temp_bytes < l.total)
    throw std::invalid_argument("build_tables_cuda: temp has " + std::to_string(a.temp_bytes) + " bytes, needs " +
                                std::to_string(l.total));
}

// Copies bucket-order rows: the widest word type that divides the row and both pointers' alignment.
template <typename CodeT>
void gather_codes(const CodeT* in, const int64_t* perm, CodeT* out, int64_t bn, int64_t r, int sms, cudaStream_t s) {
  const size_t row_bytes = (size_t)r * sizeof(CodeT);
  const uintptr_t align = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out);
  auto fits = [&](size_t w) { return row_bytes % w == 0 && align % w == 0; };
  const int blocks_cap = sms * 32;
  auto launch = [&](auto word) {
    using W = decltype(word);
    const int64_t wpr = (int64_t)(row_bytes / sizeof(W));
    const int blocks = (int)std::max<int64_t>(1, std::min<int64_t>((bn * wpr + kThreads - 1) / kThreads, blocks_cap));
    gather_rows_kernel<W><<<blocks, kThreads, 0, s>>>(reinterpret_cast<const W*>(in), perm,
                                                      reinterpret_cast<W*>(out), bn, wpr);
  };
  if (fits(16)) launch(uint4{});
  else if (fits(8)) launch(uint2{});
  else if (fits(4)) launch(uint32_t{});
  else launch(uint16_t{});
  check(cudaGetLastError(), "gather_rows_kernel launch");
}

}  // namespace

uint64_t build_tables_cuda_temp_bytes(int64_t n_tables, int64_t n, int64_t n_bits) {
  return (uint64_t)make_layout(n_tables, n, n_bits).total;
}

template <typename CodeT>
CudaBuildState build_tables_cuda_sort(const CudaBuildArgs<CodeT>& a, void* stream) {
  const Layout l = make_layout(a.n_tables, a.n, a.n_bits);
  check_args(a, l);
  CudaBuildState state;
  const int64_t b = a.n_tables, n = a.n, r = a.n_bits, bn = b * n;
  if (bn == 0) return state;
  if (!a.keys_in || !a.codes_in || !a.ids_in) throw std::invalid_argument("build_tables_cuda: null input");
  auto s = static_cast<cudaStream_t>(stream);
  const int sms = sm_count();
  const int grid = grid_for(bn, kThreads, sms);
  int64_t* perm[2] = {at<int64_t>(a.temp, l.perm[0]), at<int64_t>(a.temp, l.perm[1])};
  uint64_t* key[2] = {at<uint64_t>(a.temp, l.key[0]), at<uint64_t>(a.temp, l.key[1])};
  int64_t* counts = at<int64_t>(a.temp, l.counts);
  int64_t* runs = at<int64_t>(a.temp, l.runs);
  int* flags = at<int>(a.temp, l.flags);
  void* cub_tmp = at<char>(a.temp, l.cub);

  // 1. validation (one small device -> host copy)
  check(cudaMemsetAsync(flags, 0, 2 * sizeof(int), s), "cudaMemsetAsync");
  validate_kernel<<<grid, kThreads, 0, s>>>(a.keys_in, a.ids_in, bn, n, (int)r, flags);
  check(cudaGetLastError(), "validate_kernel launch");
  int host_flags[2] = {0, 0};
  check(cudaMemcpyAsync(host_flags, flags, sizeof host_flags, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(s), "validate_kernel");
  if (host_flags[1])
    throw std::invalid_argument("build_tables_cuda: a key has a bit set at position >= n_bits (" + std::to_string(r) +
                                ")");
  const bool ids_sorted = host_flags[0] == 0;

  // 2. sort every table by (key, id)
  int p_cur = 0;
  iota_kernel<<<grid, kThreads, 0, s>>>(perm[0], bn);
  check(cudaGetLastError(), "iota_kernel launch");
  if (!ids_sorted) {
    int64_t* idk[2] = {reinterpret_cast<int64_t*>(key[0]), reinterpret_cast<int64_t*>(key[1])};
    check(cudaMemcpyAsync(idk[0], a.ids_in, bn * sizeof(int64_t), cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
    int k_sel = 0, p_sel = 0;
    sort_tables<int64_t>(idk[0], idk[1], perm[0], perm[1], b, n, cub_tmp, l.cub_bytes, s,
                         [&](void* t, size_t& bytes, cub::DoubleBuffer<int64_t>& kd, cub::DoubleBuffer<int64_t>& pd) {
                           return sort_by_id(t, bytes, kd, pd, (int)n, s);
                         },
                         k_sel, p_sel);
    p_cur = p_sel;
    gather_keys_kernel<<<grid, kThreads, 0, s>>>(a.keys_in, perm[p_cur], key[0], bn);
    check(cudaGetLastError(), "gather_keys_kernel launch");
  } else {
    check(cudaMemcpyAsync(key[0], a.keys_in, bn * sizeof(uint64_t), cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
  }
  int k_sel = 0, p_sel = 0;
  sort_tables<uint64_t>(key[0], key[1], perm[p_cur], perm[1 - p_cur], b, n, cub_tmp, l.cub_bytes, s,
                        [&](void* t, size_t& bytes, cub::DoubleBuffer<uint64_t>& kd, cub::DoubleBuffer<int64_t>& pd) {
                          return sort_by_key(t, bytes, kd, pd, (int)n, (int)r, s);
                        },
                        k_sel, p_sel);
  const int k_sorted = k_sel;                              // key[k_sorted]: sorted keys
  const int p_sorted = p_sel == 0 ? p_cur : 1 - p_cur;     // perm[p_sorted]: sorted row indices

  // 3. runs of equal keys in each table: unique keys into the other key buffer, run lengths, counts
  for (int64_t j = 0; j < b; ++j) {
    size_t bytes = l.cub_bytes;
    check(encode_runs(cub_tmp, bytes, key[k_sorted] + j * n, key[1 - k_sorted] + j * n, counts + j * n, runs + j,
                      (int)n, s),
          "cub::DeviceRunLengthEncode::Encode");
  }
  std::vector<int64_t> host_runs((size_t)b);
  check(cudaMemcpyAsync(host_runs.data(), runs, b * sizeof(int64_t), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(s), "sort / run-length encode");
  int64_t total = 0;
  for (int64_t v : host_runs) {
    if (v < 1 || v > n) throw std::runtime_error("build_tables_cuda: inconsistent number of buckets");
    total += v;
  }
  state.n_unique = total;
  state.perm_buffer = p_sorted;
  state.key_buffer = 1 - k_sorted;
  return state;
}

template <typename CodeT>
void build_tables_cuda_finish(const CudaBuildArgs<CodeT>& a, const CudaBuildState& st, void* stream) {
  const Layout l = make_layout(a.n_tables, a.n, a.n_bits);
  check_args(a, l);
  const int64_t b = a.n_tables, n = a.n, r = a.n_bits, bn = b * n, U = st.n_unique;
  auto s = static_cast<cudaStream_t>(stream);
  if (!a.table_start_out || !a.offsets_out) throw std::invalid_argument("build_tables_cuda: null output");
  if (bn == 0) {
    check(cudaMemsetAsync(a.table_start_out, 0, (b + 1) * sizeof(int64_t), s), "cudaMemsetAsync");
    check(cudaMemsetAsync(a.offsets_out, 0, sizeof(int64_t), s), "cudaMemsetAsync");
    return;
  }
  if (U < 1 || U > bn || (st.perm_buffer & ~1) || (st.key_buffer & ~1))
    throw std::invalid_argument("build_tables_cuda: invalid build state");
  if (!a.keys_out || !a.ids_out || !a.bucket_sum_out || !a.bucket_sqnorm_out)
    throw std::invalid_argument("build_tables_cuda: null output");
  const int sms = sm_count();
  const int64_t* perm = at<int64_t>(a.temp, l.perm[st.perm_buffer]);
  const uint64_t* unique_keys = at<uint64_t>(a.temp, l.key[st.key_buffer]);  // table j's at j * n
  const int64_t* table_counts = at<int64_t>(a.temp, l.counts);              // table j's at j * n
  const int64_t* runs = at<int64_t>(a.temp, l.runs);
  int64_t* counts = at<int64_t>(a.temp, l.perm[1 - st.perm_buffer]);  // compacted; the other permutation is free
  int64_t* extra_end = at<int64_t>(a.temp, l.key[1 - st.key_buffer]);  // the sorted keys are no longer needed
  double* partials = at<double>(a.temp, l.partials);
  void* cub_tmp = at<char>(a.temp, l.cub);

  // table_start, keys, offsets
  const int grid = grid_for(bn, kThreads, sms);
  table_start_kernel<<<1, 32, 0, s>>>(runs, b, n, a.table_start_out, a.offsets_out);
  check(cudaGetLastError(), "table_start_kernel launch");
  compact_kernel<<<grid, kThreads, 0, s>>>(unique_keys, table_counts, runs, a.table_start_out, bn, n, a.keys_out,
                                           counts);
  check(cudaGetLastError(), "compact_kernel launch");
  {
    size_t need = 0;
    check(scan_offsets(nullptr, need, counts, a.offsets_out, (int)U, s), "scan size");
    if (need > l.cub_bytes) throw std::runtime_error("build_tables_cuda: scan scratch larger than reserved");
    size_t bytes = l.cub_bytes;
    check(scan_offsets(cub_tmp, bytes, counts, a.offsets_out, (int)U, s), "cub::DeviceScan::ExclusiveSum");
  }

  // ids and codes into bucket order
  gather_ids_kernel<<<grid, kThreads, 0, s>>>(a.ids_in, perm, a.ids_out, bn);
  check(cudaGetLastError(), "gather_ids_kernel launch");
  if (a.codes_out) gather_codes(a.codes_in, perm, a.codes_out, bn, r, sms, s);

  // statistics: read the gathered codes when there are any (contiguous rows), else through perm
  const CodeT* src = a.codes_out ? a.codes_out : a.codes_in;
  const int64_t* src_perm = a.codes_out ? nullptr : perm;
  stats_first_kernel<CodeT><<<grid_for(U, kWarpsPerBlock, sms), kThreads, 0, s>>>(
      src, src_perm, a.offsets_out, U, (int)r, a.bucket_sum_out, a.bucket_sqnorm_out);
  check(cudaGetLastError(), "stats_first_kernel launch");
  const int64_t max_extra = (bn - U) / kChunk;  // a bucket of c rows has (c-1)/kChunk extra chunks
  if (max_extra > 0) {
    {
      size_t need = 0;
      check(scan_extra(nullptr, need, counts, extra_end, (int)U, s), "scan size");
      if (need > l.cub_bytes) throw std::runtime_error("build_tables_cuda: scan scratch larger than reserved");
      size_t bytes = l.cub_bytes;
      check(scan_extra(cub_tmp, bytes, counts, extra_end, (int)U, s), "cub::DeviceScan::InclusiveSum");
    }
    if (max_extra >= l.n_partials) throw std::runtime_error("build_tables_cuda: partial slots overflow");
    stats_extra_kernel<CodeT><<<grid_for(max_extra, kWarpsPerBlock, sms), kThreads, 0, s>>>(
        src, src_perm, a.offsets_out, extra_end, U, (int)r, partials);
    check(cudaGetLastError(), "stats_extra_kernel launch");
    combine_kernel<<<grid_for((U + 31) / 32, kWarpsPerBlock, sms), kThreads, 0, s>>>(
        extra_end, U, (int)r, partials, a.bucket_sum_out, a.bucket_sqnorm_out);
    check(cudaGetLastError(), "combine_kernel launch");
  }
}

template CudaBuildState build_tables_cuda_sort<float>(const CudaBuildArgs<float>&, void*);
template CudaBuildState build_tables_cuda_sort<uint16_t>(const CudaBuildArgs<uint16_t>&, void*);
template void build_tables_cuda_finish<float>(const CudaBuildArgs<float>&, const CudaBuildState&, void*);
template void build_tables_cuda_finish<uint16_t>(const CudaBuildArgs<uint16_t>&, const CudaBuildState&, void*);

}  // namespace llsh
