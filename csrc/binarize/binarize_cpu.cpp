#include "binarize.h"

#include "llsh/common.h"

namespace llsh {

void binarize_cpu(const float* codes, int64_t n_rows, int64_t n_bits, uint64_t* keys, int n_threads) {
  parallel_for(n_rows, n_threads, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* c = codes + row * n_bits;
      uint64_t key = 0;
      for (int64_t i = 0; i < n_bits; ++i) key |= (uint64_t)(c[i] >= 0.5f) << i;
      keys[row] = key;
    }
  });
}

}  // namespace llsh
