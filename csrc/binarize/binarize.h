// binarize: real-valued codes -> packed r-bit keys.  bit i = (code_i >= 0.5), i.e. logit_i >= 0.
#pragma once
#include <cstdint>

namespace llsh {

// codes: [n_rows, n_bits] float32 (row = one (item, table) pair); keys: [n_rows] uint64.
// from_logits: `codes` holds logits; they are replaced in place by sigmoid(logit) (the fused
// sigmoid + binarize).  The sigmoid is evaluated element by element with the same scalar code
// everywhere, so a row's code never depends on where it sits in a batch (vectorised library
// sigmoids take another path for a batch's tail elements and differ in the last bit).
void binarize_cpu(float* codes, int64_t n_rows, int64_t n_bits, uint64_t* keys, bool from_logits, int n_threads);

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
