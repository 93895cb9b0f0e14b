// Philox4x32-10 for 16 consecutive counters at once (one per lane): the same words as
// randint4x in lowprec/philox.h, so the byte stream is the one NUMERICS.md defines. The
// 32x32 -> 64-bit products are exact in 64-bit lanes; everything else is 32-bit lane logic.
#pragma once
#include "lowprec/philox.h"
#include "simd.h"

namespace lowprec::simd {

typedef uint32_t vu32x32 __attribute__((vector_size(128)));
typedef uint64_t vq16 __attribute__((vector_size(128)));
typedef uint64_t vq32 __attribute__((vector_size(256)));

// (hi, lo) words of a * b for 16 lanes: even and odd lanes as 64-bit lanes (products exact).
LOWPREC_INLINE void mul_wide(vu a, uint32_t b, vu* hi, vu* lo) {
  const vq8 q = (vq8)a;
  const vq8 low = (vq8){} + 0xFFFFFFFFull;
  const vq8 even = (q & low) * static_cast<uint64_t>(b), odd = (q >> 32) * static_cast<uint64_t>(b);
  *hi = (vu)((even >> 32) | (odd & ~low));
  *lo = a * b;
}

// The 256 stream bytes of counters offset + first .. offset + first + 15 (counter c's 16
// bytes at out[16 (c - first)], words little-endian), i.e. bytes 16 first .. 16 first + 255.
LOWPREC_INLINE void philox_256_bytes(uint64_t seed, uint64_t counter, uint8_t* out) {
  const uint32_t lo0 = static_cast<uint32_t>(counter), hi0 = static_cast<uint32_t>(counter >> 32);
  vu c0 = vu{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + lo0;
  vu c1 = (vu{} + hi0) - (vu)(c0 < lo0);   // carry into the high word (true lanes are -1)
  vu c2 = vu{}, c3 = vu{};
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    vu hi_b, lo_b, hi_a, lo_a;
    mul_wide(c2, kPhiloxRoundB, &hi_b, &lo_b);
    mul_wide(c0, kPhiloxRoundA, &hi_a, &lo_a);
    c0 = hi_b ^ c1 ^ k0;
    c2 = hi_a ^ c3 ^ k1;
    c1 = lo_b;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  // transpose words: lane l's (c0, c1, c2, c3) become 16 consecutive bytes
  const vu32x32 p01 = __builtin_shufflevector(c0, c1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9,
                                          25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const vu32x32 p23 = __builtin_shufflevector(c2, c3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9,
                                          25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  vq16 a, b;
  memcpy(&a, &p01, sizeof a);
  memcpy(&b, &p23, sizeof b);
  const vq32 w = __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25,
                                        10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  memcpy(out, &w, sizeof w);
}

// Stream bytes [base, base + n) into tmp (which holds n + 16 + 255 bytes); returns where byte
// `base` landed (tmp + base % 16).
LOWPREC_INLINE const uint8_t* philox_span(uint64_t seed, uint64_t offset, int64_t base, int64_t n, uint8_t* tmp) {
  const int64_t c0 = base / 16, c1 = (base + n - 1) / 16;
  for (int64_t c = c0; c <= c1; c += 16) philox_256_bytes(seed, offset + static_cast<uint64_t>(c), tmp + (c - c0) * 16);
  return tmp + (base - c0 * 16);
}

}  // namespace lowprec::simd
