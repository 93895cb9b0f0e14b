// CPU kernel: the Philox byte stream, 256 bytes (16 counters, one per vector lane) at a time,
// parallel over those groups.
#include "aten.h"

#include <algorithm>

#include "philox_simd.h"

namespace lowprec {

namespace {

LOWPREC_ISA_CLONES void fill_stream(uint64_t seed, uint64_t offset, uint8_t* p, int64_t numel, int64_t g0,
                                    int64_t g1) {
  for (int64_t grp = g0; grp < g1; ++grp) {
    const int64_t base = grp * 256;
    if (base + 256 <= numel) {
      simd::philox_256_bytes(seed, offset + static_cast<uint64_t>(grp * 16), p + base);
    } else {
      uint8_t tmp[256];
      simd::philox_256_bytes(seed, offset + static_cast<uint64_t>(grp * 16), tmp);
      std::copy(tmp, tmp + (numel - base), p + base);
    }
  }
}

}  // namespace

at::Tensor random_bytes_cpu(int64_t seed, int64_t offset, int64_t numel) {
  TORCH_CHECK(numel >= 0, "lowprec::random_bytes: numel must be >= 0, got ", numel);
  auto out = at::empty({numel}, at::TensorOptions().dtype(at::kByte));
  uint8_t* p = out.data_ptr<uint8_t>();
  const int64_t groups = (numel + 255) / 256;
  at::parallel_for(0, groups, 256, [&](int64_t begin, int64_t end) {
    fill_stream(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), p, numel, begin, end);
  });
  return out;
}

}  // namespace lowprec
