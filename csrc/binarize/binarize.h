// binarize: real-valued codes -> packed r-bit keys.  bit i = (code_i >= 0.5), i.e. logit_i >= 0.
#pragma once
#include <cstdint>

namespace llsh {

// codes: [n_rows, n_bits] float32 (row = one (item, table) pair); keys: [n_rows] uint64.
void binarize_cpu(const float* codes, int64_t n_rows, int64_t n_bits, uint64_t* keys, int n_threads);

#ifdef LLSH_WITH_CUDA
// Same on device memory, on `stream`.  from_logits=true applies the sigmoid first and also writes
// the sigmoid codes to `codes_out` (may be null): the fused binarize of the CUDA path.
void binarize_cuda(const float* in, int64_t n_rows, int64_t n_bits, bool from_logits,
                   float* codes_out, uint64_t* keys, void* stream);
#endif

}  // namespace llsh
