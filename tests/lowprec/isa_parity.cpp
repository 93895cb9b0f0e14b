// ISA parity check of the CPU kernels' vector building blocks (csrc/cpu/*.h), compiled by
// test_isa_parity.py once per x86 level (AVX-512, AVX2, baseline SSE2) with the extension's
// floating-point flags. Every lane operation is compared with the scalar functions of
// csrc/include/lowprec (the reference's bit logic): element rounding and codes in all four
// modes, the 16-lane Philox, byte and nibble packing, and the 16-vector max reduction.
// The extension compiles these headers into target_clones; this runs the same source at
// each level on whatever CPU CI has. Prints "ok <checks>" and exits 0, or the first mismatch.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "element_simd.h"
#include "lowprec/formats.h"
#include "lowprec/philox.h"
#include "philox_simd.h"
#include "simd.h"

using namespace lowprec;
using namespace lowprec::simd;

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32() {   // xorshift64*
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return static_cast<uint32_t>((state * 0x2545F4914F6CDD1Dull) >> 32);
}

static long checks = 0;
static int fail(const char* what, long i) {
  printf("MISMATCH %s at %ld\n", what, i);
  return 1;
}

// Inputs around a format's grid: random magnitudes over its range and beyond, exact grid
// points and midpoints (ties), subnormals of fp32 and of the format, zeros, infinities, NaN.
static float sample(const Minifloat& f, int i) {
  switch (i % 8) {
    case 0: return bits_to_float(next_u32());   // any bit pattern
    case 1: return 0.0f * ((next_u32() & 1) ? 1.0f : -1.0f);
    case 2: {   // a grid value or a midpoint between two
      const uint32_t code = next_u32() % (1u << (f.ebits + f.mbits + 1));
      const float v = round_to_grid(static_cast<float>(code) * 0.37f, f, kNearest, 0);
      const float ulp = exp2i((v == 0.0f ? 1 - f.bias : floor_log2(fabsf(v))) - f.mbits);
      return (next_u32() & 1) ? v + 0.5f * ulp : v;
    }
    case 3: return (next_u32() & 1) ? INFINITY : -INFINITY;
    case 4: return NAN;
    default: {
      const int e = static_cast<int>(next_u32() % 60) - 40;
      return ldexpf(1.0f + static_cast<float>(next_u32() % 4096) / 4096.0f, e) * ((next_u32() & 1) ? 1.0f : -1.0f);
    }
  }
}

template <int Mode>
static int check_encode(const Minifloat& f) {
  const ElementCoder coder(f);
  for (int round = 0; round < 4000; ++round) {
    float x[W], value[W];
    uint8_t rand[kLoadBytesReach] = {};
    for (int l = 0; l < W; ++l) {
      x[l] = sample(f, round * W + l);
      rand[l] = static_cast<uint8_t>(next_u32());
    }
    vf v;
    const vi code = encode<Mode>(load(x), coder, load_bytes(rand), &v);
    store(value, v);
    for (int l = 0; l < W; ++l) {
      const float want = round_to_grid(x[l], f, Mode, rand[l]);
      const uint32_t want_code = grid_to_code(want, f, true);
      const bool same_value = (isnan(want) && isnan(value[l])) || float_to_bits(want) == float_to_bits(value[l]);
      if (!same_value || static_cast<uint32_t>(code[l]) != want_code) {
        printf("x=%a mode=%d rand=%d: value %a code %u, want %a code %u\n", x[l], Mode, rand[l], value[l],
               static_cast<uint32_t>(code[l]), want, want_code);
        return fail("encode", round);
      }
      ++checks;
    }
  }
  return 0;
}

static int check_philox() {
  const uint64_t counters[] = {0, 1, 0xFFFFFFF8ull, 0x1FFFFFFF5ull, 0xFFFFFFFFFFFFFFF9ull, 123456789ull};
  for (uint64_t first : counters) {
    const uint64_t seed = (static_cast<uint64_t>(next_u32()) << 32) | next_u32();
    uint8_t got[3][256];
    philox_256_bytes_generic(seed, first, got[0]);
    philox_256_bytes(seed, first, got[1]);   // dispatched: AVX-512 intrinsics where the CPU has them
#if defined(LOWPREC_X86_CLONES)
    const int variants = __builtin_cpu_supports("avx512f") ? 3 : 2;
    if (variants == 3) philox_256_bytes_avx512(seed, first, got[2]);
#else
    const int variants = 2;
#endif
    for (int v = 0; v < variants; ++v) {
      for (int c = 0; c < 16; ++c) {
        const Uint4x32 r = randint4x(seed, first + c);
        if (memcmp(got[v] + 16 * c, r.w, 16) != 0) return fail("philox", v * 100 + c);
        ++checks;
      }
    }
  }
  return 0;
}

static int check_packing() {
  for (int round = 0; round < 1000; ++round) {
    uint8_t bytes[kLoadBytesReach] = {}, back[W];
    int32_t nibbles[W];
    for (int l = 0; l < W; ++l) {
      bytes[l] = static_cast<uint8_t>(next_u32());
      nibbles[l] = static_cast<int32_t>(next_u32() & 15);
    }
    const vi v = load_bytes(bytes);
    for (int l = 0; l < W; ++l)
      if (v[l] != bytes[l]) return fail("load_bytes", round);
    store_bytes(back, v);
    if (memcmp(back, bytes, W) != 0) return fail("store_bytes", round);
    vi n;
    memcpy(&n, nibbles, sizeof n);
    const uint64_t p = pack_nibbles(n);
    for (int l = 0; l < W; ++l)
      if (static_cast<int32_t>((p >> (4 * l)) & 15) != nibbles[l]) return fail("pack_nibbles", round);
    checks += 3;
  }
  return 0;
}

static int check_transpose_max() {
  for (int round = 0; round < 1000; ++round) {
    vi v[W];
    int32_t want[W];
    for (int q = 0; q < W; ++q) {
      want[q] = 0;
      for (int l = 0; l < W; ++l) {
        v[q][l] = static_cast<int32_t>(next_u32() & 0x7FFFFFFF);
        want[q] = v[q][l] > want[q] ? v[q][l] : want[q];
      }
    }
    const vi got = transpose_max(v);
    for (int q = 0; q < W; ++q)
      if (got[q] != want[q] || hmax_i(v[q]) != want[q]) return fail("transpose_max", round);
    ++checks;
  }
  return 0;
}

int main() {
  const Minifloat formats[] = {
      {2, 1, 1, 6.0f, -1},        // E2M1
      {4, 3, 7, 448.0f, 0x7F},    // E4M3
      {5, 2, 15, 57344.0f, 0x7F}, // E5M2
      {2, 3, 1, 7.5f, -1},        // E2M3
      {3, 2, 3, 28.0f, -1},       // E3M2
      {5, 3, 15, 114688.0f, 0xFF} // UE5M3-like: wide exponent, NaN code
  };
  int bad = check_philox() || check_packing() || check_transpose_max();
  for (const Minifloat& f : formats) {
    bad = bad || check_encode<kNearest>(f) || check_encode<kStochastic>(f) || check_encode<kZero>(f) ||
          check_encode<kUp>(f);
  }
  if (bad) return 1;
  printf("ok %ld\n", checks);
  return 0;
}
