// CPU kernel: the Philox byte stream, 16 bytes per counter, parallel over counters.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "lowprec/philox.h"

namespace lowprec {

at::Tensor random_bytes_cpu(int64_t seed, int64_t offset, int64_t numel) {
  TORCH_CHECK(numel >= 0, "lowprec::random_bytes: numel must be >= 0, got ", numel);
  auto out = at::empty({numel}, at::TensorOptions().dtype(at::kByte));
  uint8_t* p = out.data_ptr<uint8_t>();
  const int64_t n_counters = (numel + 15) / 16;
  at::parallel_for(0, n_counters, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Uint4x32 r = randint4x(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset + c));
      const int64_t base = c * 16;
      for (int j = 0; j < 16 && base + j < numel; ++j) {
        p[base + j] = static_cast<uint8_t>(r.w[j / 4] >> (8 * (j % 4)));
      }
    }
  });
  return out;
}

}  // namespace lowprec
