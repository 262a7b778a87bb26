#include "binarize.h"

#include <cmath>

#include "llsh/common.h"

namespace llsh {

void binarize_cpu(float* codes, int64_t n_rows, int64_t n_bits, uint64_t* keys, bool from_logits, int n_threads) {
  parallel_for(n_rows, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float* c = codes + row * n_bits;
      if (from_logits)
        for (int64_t i = 0; i < n_bits; ++i) c[i] = 1.0f / (1.0f + std::exp(-c[i]));
      uint64_t key = 0;
      for (int64_t i = 0; i < n_bits; ++i) key |= (uint64_t)(c[i] >= 0.5f) << i;
      keys[row] = key;
    }
  });
}

}  // namespace llsh
