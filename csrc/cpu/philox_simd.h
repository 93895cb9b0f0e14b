// Philox4x32-10 for 16 consecutive counters at once (one per lane): the same words as
// randint4x in lowprec/philox.h, so the byte stream is the one docs/numerics.md defines. The
// 32x32 -> 64-bit products are exact in 64-bit lanes; everything else is 32-bit lane logic.
#pragma once
#include "lowprec/philox.h"
#include "simd.h"

#if defined(LOWPREC_X86_CLONES)
#include <immintrin.h>
#endif

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

// Lane l's words (c0, c1, c2, c3) become bytes 16 l .. 16 l + 15 of out (little-endian).
LOWPREC_INLINE void store_words(vu c0, vu c1, vu c2, vu c3, uint8_t* out) {
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

// The counters offset + first + lane as (low word, high word) lanes.
LOWPREC_INLINE void counter_words(uint64_t counter, vu* lo, vu* hi) {
  const uint32_t lo0 = static_cast<uint32_t>(counter), hi0 = static_cast<uint32_t>(counter >> 32);
  *lo = vu{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + lo0;
  *hi = (vu{} + hi0) - (vu)(*lo < lo0);   // carry into the high word (true lanes are -1)
}

// The 256 stream bytes of counters counter .. counter + 15 (counter c's 16 bytes at
// out[16 (c - counter)], words little-endian): portable vector code.
LOWPREC_INLINE void philox_256_bytes_generic(uint64_t seed, uint64_t counter, uint8_t* out) {
  vu c0, c1;
  counter_words(counter, &c0, &c1);
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
  store_words(c0, c1, c2, c3, out);
}

#if defined(LOWPREC_X86_CLONES)
// The same with AVX-512 intrinsics: GCC 12 multiplies the generic 64-bit lanes as full 64 x 64
// products (three vpmuludq each); here each 32 x 32 -> 64 product is one vpmuludq.
__attribute__((target("avx512f"))) inline void philox_256_bytes_avx512(uint64_t seed, uint64_t counter,
                                                                        uint8_t* out) {
  vu lo, hi;
  counter_words(counter, &lo, &hi);
  __m512i c0, c1, c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  memcpy(&c0, &lo, sizeof c0);
  memcpy(&c1, &hi, sizeof c1);
  const __m512i ra = _mm512_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m512i rb = _mm512_set1_epi32(static_cast<int>(kPhiloxRoundB));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    // a * b for the even lanes (64-bit products in place) and the odd lanes (shifted down)
    const __m512i pb_even = _mm512_mul_epu32(c2, rb), pb_odd = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), rb);
    const __m512i pa_even = _mm512_mul_epu32(c0, ra), pa_odd = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), ra);
    const __m512i hi_b = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pb_even, 32), pb_odd);
    const __m512i lo_b = _mm512_mask_blend_epi32(0xAAAA, pb_even, _mm512_slli_epi64(pb_odd, 32));
    const __m512i hi_a = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pa_even, 32), pa_odd);
    const __m512i lo_a = _mm512_mask_blend_epi32(0xAAAA, pa_even, _mm512_slli_epi64(pa_odd, 32));
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi_b, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi_a, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c1 = lo_b;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  vu w0, w1, w2, w3;
  memcpy(&w0, &c0, sizeof w0);
  memcpy(&w1, &c1, sizeof w1);
  memcpy(&w2, &c2, sizeof w2);
  memcpy(&w3, &c3, sizeof w3);
  store_words(w0, w1, w2, w3, out);
}
#endif

// The 256 stream bytes of counters counter .. counter + 15, by the best code this CPU runs.
LOWPREC_INLINE void philox_256_bytes(uint64_t seed, uint64_t counter, uint8_t* out) {
#if defined(LOWPREC_X86_CLONES)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) return philox_256_bytes_avx512(seed, counter, out);
#endif
  philox_256_bytes_generic(seed, counter, out);
}

// Stream bytes [base, base + n) into tmp (which holds n + 16 + 255 bytes); returns where byte
// `base` landed (tmp + base % 16).
LOWPREC_INLINE const uint8_t* philox_span(uint64_t seed, uint64_t offset, int64_t base, int64_t n, uint8_t* tmp) {
  const int64_t c0 = base / 16, c1 = (base + n - 1) / 16;
  for (int64_t c = c0; c <= c1; c += 16) philox_256_bytes(seed, offset + static_cast<uint64_t>(c), tmp + (c - c0) * 16);
  return tmp + (base - c0 * 16);
}

}  // namespace lowprec::simd
