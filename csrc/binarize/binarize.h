// binarize: real-valued codes -> packed r-bit keys.  bit i = (code_i >= 0.5), i.e. logit_i >= 0.
// Also the CPU hashing epilogue around the projection GEMM (LayerNorm statistics, the folded
// LayerNorm, the sigmoid), so that hashing reads the input once besides the GEMM itself.
#pragma once
#include <cstdint>

namespace llsh {

// codes: [n_rows, n_bits] float32 (row = one (item, table) pair); keys: [n_rows] uint64.
// from_logits: `codes` holds logits; they are replaced in place by sigmoid(logit) (the fused
// sigmoid + binarize).  The sigmoid (sigmoid_inplace below) gives every element the same
// instruction sequence, so a row's code never depends on where it sits in a batch.
void binarize_cpu(float* codes, int64_t n_rows, int64_t n_bits, uint64_t* keys, bool from_logits, int n_threads);

// In place: v[i] = 1 / (1 + exp(-v[i])) with a vectorised exp (Cephes polynomial, <= 2 ulp; the
// sigmoid is within 1e-7 of the exact value).  Elements are processed four at a time with the
// same SSE2 instructions, the tail through a padded block, so the result of an element depends
// on its value only (never on the array length or its position in it).
void sigmoid_inplace(float* v, int64_t n);

// LayerNorm statistics of x [n_rows, dim] float32 (no affine): mean and rstd = 1 / sqrt(var + eps),
// reading x once from memory: per row a mean pass, then the squares about that mean while the row
// is still in cache (no E[x^2] - mean^2 cancellation), in float32 lanes combined in float64;
// bit-identical at every ISA level.  A row whose sum of squares overflows float32 (as LayerNorm's
// float32 variance would) or holds a NaN/Inf gets NaN mean and rstd, so its logits are NaN and
// the caller rejects it.
void row_moments_cpu(const float* x, int64_t n_rows, int64_t dim, double eps, float* mean, float* rstd,
                     int n_threads);

// The folded LayerNorm epilogue, in place on raw = x W^T [n_rows, n_tables * n_bits]:
//   logit[i, k] = (raw[i, k] - mean[i] * wsum[k]) * rstd[i]        (wsum = W 1, the row sums of W)
// (HashEncoder passes mean = 0 and a raw that already holds x W^T - mean wsum: it folds the mean
// into the GEMM's bias, so only the rstd scale and the sigmoid are left here.)
// then, when with_sigmoid, code = sigmoid(logit) and keys [n_rows, n_tables] as in binarize_cpu.
// Returns the first row with a NaN logit, or -1.  The fold and the sigmoid are the same
// per-element code as row by row fold + binarize_cpu(from_logits), so both give identical bits.
// table_codes / table_keys (optional, with_sigmoid): also write each row's codes and keys table-major,
// into [n_tables, n_total, n_bits] / [n_tables, n_total] at rows row0.., as add() stages them.
int64_t hash_epilogue_cpu(float* raw, int64_t n_rows, int64_t n_tables, int64_t n_bits, const float* mean,
                          const float* rstd, const float* wsum, bool with_sigmoid, uint64_t* keys, int n_threads,
                          float* table_codes = nullptr, uint64_t* table_keys = nullptr, int64_t n_total = 0,
                          int64_t row0 = 0);

#ifdef LLSH_WITH_CUDA
// Same on device memory, on `stream` (a cudaStream_t).  in: [n_rows, n_bits] float32, codes when
// from_logits=false, logits when true.  from_logits=true applies torch's float32 sigmoid
// 1 / (1 + expf(-x)) and writes the codes to `codes_out` (may be null; may equal `in`); the key bit is
// then taken from that written float code (code >= 0.5f), so keys and codes always agree.  With
// from_logits=false a non-null codes_out receives a copy of `in`.  No allocation, no synchronisation.
void binarize_cuda(const float* in, int64_t n_rows, int64_t n_bits, bool from_logits,
                   float* codes_out, uint64_t* keys, void* stream);
#endif

}  // namespace llsh
