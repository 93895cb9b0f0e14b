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
typedef uint8_t vb __attribute__((vector_size(16)));

#define LOWPREC_INLINE inline __attribute__((always_inline))

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && defined(__linux__)
#define LOWPREC_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LOWPREC_ISA_CLONES
#endif

LOWPREC_INLINE vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
LOWPREC_INLINE void store(float* p, vf v) { memcpy(p, &v, sizeof v); }
LOWPREC_INLINE vi load_bytes(const uint8_t* p) {
  vb b; memcpy(&b, p, sizeof b);
  return __builtin_convertvector(b, vi);
}
LOWPREC_INLINE void store_bytes(uint8_t* p, vi v) {
  const vb b = __builtin_convertvector(v, vb);   // values are in [0, 255]
  memcpy(p, &b, sizeof b);
}
// Codes of 16 lanes, two per byte (even lane in the low nibble), into 8 bytes.
LOWPREC_INLINE uint64_t pack_nibbles(vi code) {
  const vi odd = __builtin_shufflevector(code, code, 1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15);
  const vb b = __builtin_convertvector(code | (odd << 4), vb);   // even bytes hold the pairs
  const vb e = __builtin_shufflevector(b, b, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14);
  uint64_t out;
  memcpy(&out, &e, sizeof out);
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

}  // namespace lowprec::simd
