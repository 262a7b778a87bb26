// binarize_cuda: device twin of binarize_cpu.  One warp handles floor(32 / r) whole rows per step
// (r <= 32) or one row per step (r > 32): each lane loads one code (coalesced), and the key bits of
// a row come out of __ballot_sync, so bit i of a key is component i exactly as on the CPU.
#include "binarize.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace llsh {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("llsh binarize_cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

// torch's float32 sigmoid (aten UnarySpecialOpsKernel.cu: one / (one + std::exp(-x))), IEEE division.
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// `in` and `codes_out` may alias (in-place sigmoid), hence no __restrict__ on them.
template <bool kFromLogits>
__global__ void __launch_bounds__(kThreads) binarize_kernel(const float* in, int64_t n_rows, int r,
                                                            float* codes_out, uint64_t* __restrict__ keys) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t n_warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  if (r <= 32) {
    const int per = 32 / r;  // rows per warp step
    const int sub = lane / r;
    const bool lane_used = sub < per;
    const uint64_t low = (r == 32) ? 0xffffffffull : ((1ull << r) - 1ull);
    for (int64_t base = warp * per; base < n_rows; base += n_warps * per) {  // warp-uniform loop
      const int64_t row = base + sub;
      bool bit = false;
      if (lane_used && row < n_rows) {
        const int64_t idx = base * r + lane;  // = row * r + (lane - sub * r)
        float c = in[idx];
        if (kFromLogits) c = sigmoid(c);
        if (codes_out) codes_out[idx] = c;
        bit = c >= 0.5f;  // from the stored float code: keys and codes agree
      }
      const unsigned mask = __ballot_sync(kFull, bit);
      if (lane < per && base + lane < n_rows) keys[base + lane] = ((uint64_t)mask >> (lane * r)) & low;
    }
  } else {
    const bool hi_used = lane + 32 < r;
    for (int64_t row = warp; row < n_rows; row += n_warps) {
      const int64_t idx = row * r + lane;
      float c0 = in[idx];
      if (kFromLogits) c0 = sigmoid(c0);
      if (codes_out) codes_out[idx] = c0;
      bool b1 = false;
      if (hi_used) {
        float c1 = in[idx + 32];
        if (kFromLogits) c1 = sigmoid(c1);
        if (codes_out) codes_out[idx + 32] = c1;
        b1 = c1 >= 0.5f;
      }
      const unsigned m0 = __ballot_sync(kFull, c0 >= 0.5f);
      const unsigned m1 = __ballot_sync(kFull, b1);
      if (lane == 0) keys[row] = (uint64_t)m0 | ((uint64_t)m1 << 32);
    }
  }
}

}  // namespace

void binarize_cuda(const float* in, int64_t n_rows, int64_t n_bits, bool from_logits, float* codes_out,
                   uint64_t* keys, void* stream) {
  if (n_bits < 1 || n_bits > 64) throw std::invalid_argument("binarize_cuda: n_bits must be 1..64");
  if (n_rows < 0) throw std::invalid_argument("binarize_cuda: n_rows must be >= 0");
  if (n_rows == 0) return;
  const int r = (int)n_bits;
  const int64_t per = r <= 32 ? 32 / r : 1;
  const int64_t warps = (n_rows + per - 1) / per;
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const int64_t want = (warps + kThreads / 32 - 1) / (kThreads / 32);
  const int blocks = (int)std::max<int64_t>(1, std::min<int64_t>(want, (int64_t)sms * 32));
  auto s = static_cast<cudaStream_t>(stream);
  if (from_logits)
    binarize_kernel<true><<<blocks, kThreads, 0, s>>>(in, n_rows, r, codes_out, keys);
  else
    binarize_kernel<false><<<blocks, kThreads, 0, s>>>(in, n_rows, r, codes_out, keys);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace llsh
