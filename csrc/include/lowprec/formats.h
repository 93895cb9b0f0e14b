// Element and scale encoding, rounding and decoding: the bit logic of docs/numerics.md, written
// once for the CPU and CUDA kernels (every function is __host__ __device__). Each function
// mirrors lowprec/reference (rounding.py, scales.py) operation for operation, in fp32, so
// that results are bit-exact.
#pragma once
#include <math.h>
#include <stdint.h>

#include "lowprec/philox.h"

namespace lowprec {

// A signed (elements) or unsigned (scales) minifloat grid.
struct Minifloat {
  int ebits, mbits, bias;
  float max;       // largest finite magnitude; conversions saturate to it
  int nan_code;    // code written for NaN, or -1 when the format has none
};

enum Rounding : int { kNearest = 0, kStochastic = 1, kZero = 2, kUp = 3 };
enum ScaleKind : int { kE8M0 = 0, kMinifloatScale = 1, kFp32Scale = 2 };
enum ScaleRule : int { kFloor = 0, kCeil = 1, kEven = 2, kRceil = 3, kAmax = 4, kRfloor = 5 };
// What a block scale maps to the element max (QuantFormat.scale_statistic).
enum ScaleStatistic : int { kStatAmax = 0, kStatGaussian = 1 };
// How values are divided by scales: correctly rounded quotients, or multiplication by fp32
// reciprocals in Transformer Engine's order (QuantFormat.division; lowprec/reference/scales.py).
enum Division : int { kIeee = 0, kReciprocal = 1 };

struct BlockFormat {
  Minifloat elem;
  int elem_emax;          // floor(log2(elem.max))
  int scale_kind;         // ScaleKind
  Minifloat scale;        // for kMinifloatScale
  int rule;               // ScaleRule
  int scale_rounding;     // kNearest or kUp (amax rule)
  int tensor_scale;       // 1: scales carry S_enc
  int division;           // Division
  int four_over_six;      // FourOverSix: per block the better of amax -> 6 and amax -> 4
  int scale_statistic;    // ScaleStatistic
  float gaussian_kappa;   // kStatGaussian: the clipping ratio (QuantFormat.gaussian_kappa)
  float pre_scale;        // the fixed S_enc of a format without a tensor scale (1: none)
};

// Four Over Six (QuantFormat.four_over_six): off, or the block error it compares.
enum FourOverSix : int { kFourOverSixOff = 0, kFourOverSixMse = 1, kFourOverSixMae = 2 };
constexpr float kFourOverSixAlt = 4.0f;   // the second block-max target (the first: the element max)

constexpr float kFp32Max = 3.402823466e38f;

// The block scale before encoding: (amax / elem_max) * S_enc, or with reciprocal division
// amax * (S_enc * fp32(1 / elem_max)).
LOWPREC_HD float high_precision_scale(float amax, const BlockFormat& f, float s_enc, float target) {
  if (f.division == kReciprocal) return amax * (s_enc * (1.0f / target));
  return (amax / target) * s_enc;
}

LOWPREC_HD float high_precision_scale(float amax, const BlockFormat& f, float s_enc) {
  return high_precision_scale(amax, f, s_enc, f.elem.max);
}

// The element value the tensor scale maps the tensor amax to (QuantFormat.scale_target).
LOWPREC_HD float scale_target(const BlockFormat& f) {
  return f.four_over_six != kFourOverSixOff ? kFourOverSixAlt : f.elem.max;
}

// s_eff = decode / S_enc, or decode * fp32(1 / S_enc) with reciprocal division.
LOWPREC_HD float effective_scale(float decoded, const BlockFormat& f, float s_enc) {
  if (f.division == kReciprocal) return decoded * (1.0f / s_enc);
  return decoded / s_enc;
}

// The multiplier of the elements with reciprocal division: min(fp32(1 / s_eff), fp32 max).
LOWPREC_HD float element_multiplier(float s_eff) {
  const float r = 1.0f / s_eff;
  return r > kFp32Max ? kFp32Max : r;
}

LOWPREC_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  __builtin_memcpy(&f, &b, 4);
  return f;
#endif
}

LOWPREC_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  __builtin_memcpy(&b, &f, 4);
  return b;
#endif
}

// 2**e exactly, for e in [-149, 127] (built from the bit pattern).
LOWPREC_HD float exp2i(int e) {
  e = e < -149 ? -149 : (e > 127 ? 127 : e);
  if (e >= -126) return bits_to_float(static_cast<uint32_t>(e + 127) << 23);
  return bits_to_float(1u << (e + 149));
}

// floor(log2(a)) for a finite a > 0 (subnormals included).
LOWPREC_HD int floor_log2(float a) {
  const uint32_t b = float_to_bits(a) & 0x7FFFFFFFu;
  const int ef = static_cast<int>(b >> 23);
  if (ef > 0) return ef - 127;
  // subnormal: value = m * 2^-149, so floor(log2) = -149 + (index of the top bit of m)
  uint32_t m = b;
  int e = -150;
  while (m) { m >>= 1; ++e; }
  return e;
}

// ceil(log2(a)) for a finite a > 0.
LOWPREC_HD int ceil_log2(float a) {
  const int f = floor_log2(a);
  return (a == exp2i(f)) ? f : f + 1;
}

// Binade exponent of an element magnitude a >= 0, clamped below at emin (>= -126): reads the
// exponent field only, so it is branch-free (fp32 subnormals are below 2^emin anyway).
LOWPREC_HD int element_exponent(float a, int emin) {
  const int e = static_cast<int>((float_to_bits(a) >> 23) & 0xFFu) - 127;
  return e < emin ? emin : e;
}

// Element rounding on the fast path: identical to round_to_grid for |x| of any value
// (emin >= -126), written without branches so that the compiler vectorizes the loop.
LOWPREC_HD float round_element(float x, const Minifloat& f, int mode, uint32_t rand) {
  float a = fabsf(x);
  a = a > f.max ? f.max : a;
  const int e = element_exponent(a, 1 - f.bias);
  const float ulp = bits_to_float(static_cast<uint32_t>(e - f.mbits + 127) << 23);
  const float inv_ulp = bits_to_float(static_cast<uint32_t>(f.mbits - e + 127) << 23);
  const float q = a * inv_ulp;               // exact: a / ulp with ulp a power of two
  float r;
  if (mode == kNearest) {
    r = rintf(q);
  } else if (mode == kZero) {
    r = floorf(q);
  } else {
    const float fl = floorf(q);
    const float frac8 = floorf((q - fl) * 256.0f);
    r = fl + ((frac8 + static_cast<float>(rand)) >= 256.0f ? 1.0f : 0.0f);
  }
  float v = r * ulp;
  v = v > f.max ? f.max : v;
  return copysignf(v, x);
}

// Code of an element grid value, branch-free (same result as grid_to_code(v, f, true)).
LOWPREC_HD uint32_t element_code(float v, const Minifloat& f) {
  const int emin = 1 - f.bias;
  const float a = fabsf(v);
  const int e = element_exponent(a, emin);
  const bool normal = a >= bits_to_float(static_cast<uint32_t>(emin + 127) << 23);
  // normal: a / 2^e * 2^m - 2^m; subnormal (e == emin): a / 2^(emin - m); both exact integers
  const float scaled = a * bits_to_float(static_cast<uint32_t>(f.mbits - e + 127) << 23);
  // signed int conversions: SSE/AVX2 have no vector float -> uint32 conversion
  const int32_t man = static_cast<int32_t>(scaled) - (normal ? (1 << f.mbits) : 0);
  const int32_t exp_field = normal ? e + f.bias : 0;
  int32_t code = (exp_field << f.mbits) | man;
  code |= static_cast<int32_t>(float_to_bits(v) >> 31) << (f.ebits + f.mbits);
  const int32_t nan_code = f.nan_code >= 0 ? f.nan_code : 0;
  return static_cast<uint32_t>((a != a) ? nan_code : code);
}

// Round |x| onto the grid (mode kNearest/kStochastic/kZero/kUp), saturate, restore the sign.
// NaN stays NaN; rand is the element's Philox byte (stochastic only).
LOWPREC_HD float round_to_grid(float x, const Minifloat& f, int mode, uint32_t rand) {
  float a = fabsf(x);
  if (a > f.max) a = f.max;                 // NaN compares false and stays NaN
  const int emin = 1 - f.bias;
  int e = (a > 0.0f) ? floor_log2(a) : emin;   // NaN: floor_log2 reads its bits; result unused
  if (e < emin) e = emin;
  const float ulp = exp2i(e - f.mbits);
  const float q = a / ulp;
  float r;
  if (mode == kNearest) {
    r = rintf(q);                            // ties to even in the default rounding mode
  } else if (mode == kZero) {
    r = floorf(q);
  } else if (mode == kUp) {
    r = ceilf(q);
  } else {
    const float fl = floorf(q);
    const float frac8 = floorf((q - fl) * 256.0f);
    r = fl + ((frac8 + static_cast<float>(rand)) >= 256.0f ? 1.0f : 0.0f);
  }
  float v = r * ulp;
  if (v > f.max) v = f.max;
  return copysignf(v, x);
}

// Code of a grid value (output of round_to_grid); NaN gives the format's NaN code, or 0.
LOWPREC_HD uint32_t grid_to_code(float v, const Minifloat& f, bool is_signed) {
  if (isnan(v)) return f.nan_code >= 0 ? static_cast<uint32_t>(f.nan_code) : 0u;
  const float a = fabsf(v);
  const int emin = 1 - f.bias;
  uint32_t code;
  if (a < exp2i(emin)) {
    code = static_cast<uint32_t>(a * exp2i(f.mbits - emin));
  } else {
    const int e = floor_log2(a);
    const uint32_t man = static_cast<uint32_t>(a * exp2i(f.mbits - e)) - (1u << f.mbits);
    code = (static_cast<uint32_t>(e + f.bias) << f.mbits) | man;
  }
  if (is_signed && signbit(v)) code |= 1u << (f.ebits + f.mbits);
  return code;
}

// Value of an unsigned minifloat scale code (the caller maps NaN codes beforehand).
LOWPREC_HD float minifloat_value(uint32_t code, const Minifloat& f) {
  const uint32_t ef = code >> f.mbits;
  const uint32_t mf = code & ((1u << f.mbits) - 1u);
  const float frac = static_cast<float>(mf) * exp2i(-f.mbits);
  if (ef == 0) return frac * exp2i(1 - f.bias);
  return (1.0f + frac) * exp2i(static_cast<int>(ef) - f.bias);
}

// Block amax with NaN propagation (as torch.amax): max |x[j]|, NaN if any x[j] is NaN.
LOWPREC_HD float block_amax(const float* x, int64_t n) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t j = 0; j < n; ++j) {
    const float a = fabsf(x[j]);
    nan |= (a != a);
    m = a > m ? a : m;
  }
  return nan ? NAN : m;
}

// max |x[j]| over the finite x[j] (0 when there are none): the amax a tensor scale is taken over.
LOWPREC_HD float finite_amax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const float a = fabsf(x[j]);
    m = (a > m && a < INFINITY) ? a : m;   // NaN compares false
  }
  return m;
}

// Tensor (second-level) encode scale S_enc = (scale max * scale_target) / amax in fp32,
// clamped to the largest finite fp32 when the quotient overflows; 1 when amax is not a finite
// number > 0 (lowprec/reference/scales.py). The amax is over the finite elements.
LOWPREC_HD float tensor_encode_scale(float amax, const BlockFormat& f) {
  const float num = static_cast<float>(static_cast<double>(f.scale.max) * static_cast<double>(scale_target(f)));
  float s = num / amax;
  s = s > 3.402823466e38f ? 3.402823466e38f : s;
  return (isfinite(amax) && amax > 0.0f) ? s : 1.0f;
}

// Scale code of a block (uint8 for e8m0/minifloat), given its amax and S_enc.
// Returns the code; NaN/Inf amax gives the NaN code (0xFF for e8m0).
LOWPREC_HD uint32_t scale_code(float amax, const BlockFormat& fmt, float s_enc, float target);

LOWPREC_HD uint32_t scale_code(float amax, const BlockFormat& fmt, float s_enc) {
  return scale_code(amax, fmt, s_enc, fmt.elem.max);
}

// ``target``: the value a minifloat scale maps the amax to (the element max, or Four Over
// Six's 4); e8m0 rules ignore it.
LOWPREC_HD uint32_t scale_code(float amax, const BlockFormat& fmt, float s_enc, float target) {
  const bool bad = !isfinite(amax);
  if (fmt.scale_kind == kE8M0) {
    if (bad) return 0xFFu;
    const float a = amax;   // e8m0 scales take no tensor scale (QuantFormat refuses it)
    int shared;
    if (fmt.rule == kFloor) {
      shared = (a > 0.0f) ? floor_log2(a) - fmt.elem_emax : -1000;
    } else if (fmt.rule == kCeil) {
      shared = (a > 0.0f) ? ceil_log2(a) - fmt.elem_emax : -1000;
    } else if (fmt.rule == kEven) {
      if (a > 0.0f) {
        const float half_ulp = exp2i(floor_log2(a) - fmt.elem.mbits - 1);
        shared = floor_log2(a + half_ulp) - fmt.elem_emax;
      } else {
        shared = -1000;
      }
    } else if (fmt.rule == kRfloor) {
      const float r = a / fmt.elem.max;
      shared = (r > 0.0f) ? floor_log2(r) : -1000;
    } else {  // kRceil
      const float r = a / fmt.elem.max;
      shared = (r > 0.0f) ? ceil_log2(r) : -1000;
    }
    shared = shared < -127 ? -127 : (shared > 127 ? 127 : shared);
    return static_cast<uint32_t>(shared + 127);
  }
  if (bad) return static_cast<uint32_t>(fmt.scale.nan_code);
  const float scale_hp = high_precision_scale(amax, fmt, s_enc, target);
  const float v = round_to_grid(scale_hp, fmt.scale, fmt.scale_rounding, 0u);
  return grid_to_code(v, fmt.scale, false);
}

// Round-to-nearest error of a block x[0..n) under s_eff (lowprec/reference/scales.py,
// rtn_block_error): d = x - v * s_eff per element, v the grid value of x / s_eff, summed as
// d * d (kFourOverSixMse) or |d| (kFourOverSixMae) as a pairwise tree in fp32, zero-padded to
// a power of two. ``work`` holds at least that power of two floats.
LOWPREC_HD float rtn_block_error(const float* x, int64_t n, float s_eff, const BlockFormat& f, float* work) {
  int64_t width = 1;
  while (width < n) width *= 2;
  for (int64_t j = 0; j < width; ++j) {
    float e = 0.0f;
    if (j < n) {
      float xs = f.division == kReciprocal ? x[j] * element_multiplier(s_eff) : x[j] / s_eff;
      xs = s_eff == 0.0f ? 0.0f : xs;
      const float v = round_to_grid(xs, f.elem, kNearest, 0u);
      const float d = x[j] - v * s_eff;
      e = f.four_over_six == kFourOverSixMse ? d * d : fabsf(d);
    }
    work[j] = e;
  }
  for (; width > 1; width /= 2)
    for (int64_t j = 0; j < width / 2; ++j) work[j] = work[2 * j] + work[2 * j + 1];
  return work[0];
}

// QuEST's Gaussian clipping value of a block x[0..n) with max |x| ``amax``
// (lowprec/reference/scales.py, gaussian_statistic): (kappa * sqrt(S / n)) * amax, S the
// pairwise tree sum of (x / amax)^2 zero-padded to a power of two, clamped to the fp32 max;
// 0 for amax 0, amax itself when it is NaN or Inf. ``work`` holds that power of two floats.
LOWPREC_HD float gaussian_statistic(const float* x, int64_t n, float amax, float kappa, float* work) {
  if (!isfinite(amax)) return amax;
  if (amax == 0.0f) return 0.0f;
  int64_t width = 1;
  while (width < n) width *= 2;
  for (int64_t j = 0; j < width; ++j) {
    const float y = j < n ? x[j] / amax : 0.0f;
    work[j] = y * y;
  }
  for (; width > 1; width /= 2)
    for (int64_t j = 0; j < width / 2; ++j) work[j] = work[2 * j] + work[2 * j + 1];
  const float c = (kappa * sqrtf(work[0] / static_cast<float>(n))) * amax;
  return c > kFp32Max ? kFp32Max : c;
}

// MS-EDEN (lowprec/reference/ms_eden.py): the two dot products of a block x[0..n) (block order)
// rounded to nearest under s_eff, each a pairwise fp32 tree zero-padded to a power of two:
// num = <x, x>, den = <x, v s_eff> (v the element grid value of x / s_eff, as quantize codes it).
// ``work`` holds that power of two floats.
LOWPREC_HD void ms_eden_block_sums(const float* x, int64_t n, float s_eff, const BlockFormat& f, float* work,
                                   float* num, float* den) {
  int64_t width = 1;
  while (width < n) width *= 2;
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t j = 0; j < width; ++j) {
      float e = 0.0f;
      if (j < n && pass == 0) {
        e = x[j] * x[j];
      } else if (j < n) {
        float xs = f.division == kReciprocal ? x[j] * element_multiplier(s_eff) : x[j] / s_eff;
        xs = s_eff == 0.0f ? 0.0f : xs;
        e = x[j] * (round_to_grid(xs, f.elem, kNearest, 0u) * s_eff);
      }
      work[j] = e;
    }
    for (int64_t w = width; w > 1; w /= 2)
      for (int64_t j = 0; j < w / 2; ++j) work[j] = work[2 * j] + work[2 * j + 1];
    *(pass == 0 ? num : den) = work[0];
  }
}

// MS-EDEN's scale code of a block from its dot products: EDEN's correction c = num / den (1
// where den is not > 0), the target decoded * c rounded to the scale grid stochastically with
// the block's Philox byte ``rand``; a non-finite target or block amax keeps ``code``.
LOWPREC_HD uint32_t ms_eden_scale_code(float num, float den, float decoded, float block_amax, uint32_t code,
                                       const Minifloat& scale, uint32_t rand) {
  const float c = den > 0.0f ? num / den : 1.0f;
  const float t = decoded * c;
  if (!isfinite(t) || !isfinite(block_amax)) return code;
  return grid_to_code(round_to_grid(t, scale, kStochastic, rand), scale, false);
}

// Four Over Six for one block (x[0..n) in block order, amax, the code mapping amax to the
// element max and its s_eff): replaces them by the code mapping amax to 4 and its s_eff where
// that has the lower round-to-nearest error; ties and non-finite amaxes keep them.
LOWPREC_HD void four_over_six(const float* x, int64_t n, float amax, const BlockFormat& f, float s_enc,
                              const float* scale_table, uint32_t* code, float* s_eff, float* work) {
  if (!isfinite(amax)) return;
  const uint32_t code4 = scale_code(amax, f, s_enc, kFourOverSixAlt);
  const float s4 = effective_scale(scale_table[code4], f, s_enc);   // s_enc is 1 without a tensor scale
  const float e6 = rtn_block_error(x, n, *s_eff, f, work);
  const float e4 = rtn_block_error(x, n, s4, f, work);
  if (e4 < e6) {
    *code = code4;
    *s_eff = s4;
  }
}

}  // namespace lowprec
