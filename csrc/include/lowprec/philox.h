// Philox4x32-10 as Triton's tl.randint4x computes it (docs/numerics.md, "Rounding").
// One definition for the CPU and CUDA kernels: every function is __host__ __device__.
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define LOWPREC_HD __host__ __device__ __forceinline__
#else
#define LOWPREC_HD inline
#endif

namespace lowprec {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;

struct Uint4x32 {
  uint32_t w[4];
};

LOWPREC_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// randint4x(seed, n): key = (seed lo, seed hi), counter = (n lo, n hi, 0, 0), 10 rounds.
LOWPREC_HD Uint4x32 randint4x(uint64_t seed, uint64_t n) {
  uint32_t c0 = static_cast<uint32_t>(n), c1 = static_cast<uint32_t>(n >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mulhi32(kPhiloxRoundB, p2) ^ c1 ^ k0;
    c2 = mulhi32(kPhiloxRoundA, p0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * p2;
    c3 = kPhiloxRoundA * p0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return Uint4x32{{c0, c1, c2, c3}};
}

// Byte i of the stream (seed, offset): byte i % 16 (little-endian) of randint4x(seed, offset + i / 16).
LOWPREC_HD uint8_t random_byte(uint64_t seed, uint64_t offset, uint64_t i) {
  const Uint4x32 r = randint4x(seed, offset + i / 16);
  const uint32_t j = static_cast<uint32_t>(i % 16);
  return static_cast<uint8_t>(r.w[j / 4] >> (8 * (j % 4)));
}

}  // namespace lowprec
