// Portable 16-lane vectors (GCC/Clang vector extensions) for the CPU kernels, and the
// attribute that compiles a hot function once per x86 ISA level (AVX-512, AVX2, baseline)
// with the best one picked at load time. Every operation here is an exact IEEE fp32 or
// integer lane operation, so a kernel gives the same bits whichever clone runs.
#pragma once
#include <stdint.h>
#include <string.h>

namespace lowprec::simd {

constexpr int W = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

#define LOWPREC_INLINE inline __attribute__((always_inline))

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && defined(__linux__)
#define LOWPREC_X86_CLONES 1
#define LOWPREC_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LOWPREC_ISA_CLONES
#endif

LOWPREC_INLINE vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
LOWPREC_INLINE void store(float* p, vf v) { memcpy(p, &v, sizeof v); }
// Bytes <-> 32-bit lanes and nibble packing are written with whole-word shuffles and shifts:
// GCC 12 lowers __builtin_convertvector between 16-byte and 64-byte vectors to scalar code.
typedef uint32_t vu4 __attribute__((vector_size(16)));
typedef uint64_t vq8 __attribute__((vector_size(64)));

// 16 bytes -> 16 lanes (zero-extended): lane l = byte l % 4 of word l / 4. Reads 64 bytes at p
// (callers pad their byte buffers): a 16-byte load widened by a shuffle goes through the stack
// in GCC 12, and the 64-byte reload after the narrower stores stalls.
constexpr int kLoadBytesReach = 64;
LOWPREC_INLINE vi load_bytes(const uint8_t* p) {
  vu w;
  memcpy(&w, p, sizeof w);
  const vu b = __builtin_shufflevector(w, w, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const vu shift = {0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24};
  return (vi)((b >> shift) & 255u);
}
// 16 lanes holding values in [0, 255] -> 16 bytes.
LOWPREC_INLINE void store_bytes(uint8_t* p, vi v) {
  const vu u = (vu)v;
  const vu4 w = __builtin_shufflevector(u, u, 0, 4, 8, 12) | (__builtin_shufflevector(u, u, 1, 5, 9, 13) << 8) |
                (__builtin_shufflevector(u, u, 2, 6, 10, 14) << 16) | (__builtin_shufflevector(u, u, 3, 7, 11, 15) << 24);
  memcpy(p, &w, sizeof w);
}
// Codes of 16 lanes (each < 16), two per byte (even lane in the low nibble), into 8 bytes: the
// pair bytes form in the 64-bit lanes, and the 64 -> 8-bit narrowing is one vpmovqb on AVX-512
// (GCC scalarizes it for AVX2 and SSE, which stay correct).
typedef uint8_t vb8 __attribute__((vector_size(8)));
LOWPREC_INLINE uint64_t pack_nibbles(vi code) {
  const vq8 q = (vq8)code;
  const vb8 b = __builtin_convertvector((q | ((q >> 32) << 4)) & 255u, vb8);
  uint64_t out;
  memcpy(&out, &b, sizeof out);
  return out;
}
LOWPREC_INLINE vf splat(float s) { return vf{} + s; }
LOWPREC_INLINE vi splat_i(int32_t s) { return vi{} + s; }
LOWPREC_INLINE vf as_f(vi v) { return reinterpret_cast<vf&>(v); }   // bit casts
LOWPREC_INLINE vi as_i(vf v) { return reinterpret_cast<vi&>(v); }

// |x| with NaN kept: clears the sign bit.
LOWPREC_INLINE vf abs(vf x) { return as_f(as_i(x) & 0x7FFFFFFF); }

// NaN-propagating max of magnitudes on their bit patterns: for x >= 0 (sign cleared) the IEEE
// bit patterns order as integers, and every NaN pattern lies above +inf, so an integer max
// returns NaN if any lane held one (as torch.amax does), else the largest magnitude.
LOWPREC_INLINE vi abs_bits(vf x) { return as_i(x) & 0x7FFFFFFF; }
LOWPREC_INLINE vi max_i(vi a, vi b) { return a > b ? a : b; }

LOWPREC_INLINE int32_t hmax_i(vi v) {
  v = max_i(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = max_i(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3));
  v = max_i(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1));
  v = max_i(v, __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0));
  return v[0];
}

// Lane q of the result = max over the lanes of v[q] (16 vectors reduced at once: 4 levels of
// half-swapping shuffles, 30 shuffles and 15 maxes instead of 16 separate horizontal maxes).
LOWPREC_INLINE vi transpose_max(const vi* v) {
  vi a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = max_i(__builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                 __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29,
                                         30, 31));
  for (int i = 0; i < 4; ++i)
    b[i] = max_i(__builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27),
                 __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                         31));
  for (int i = 0; i < 2; ++i)
    c[i] = max_i(__builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29),
                 __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                                         31));
  return max_i(__builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
               __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31));
}

}  // namespace lowprec::simd
