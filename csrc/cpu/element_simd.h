// 16 elements at a time: round x_scaled onto a minifloat element grid and return its codes,
// the same bits as element_code(round_element(x, f, mode, rand), f) in formats.h.
//
// With a = min(|x|, max), e = max(floor(log2 a), emin) and q = a * 2^(mbits - e) (exact),
// the rounded integer r = R(q) in [0, 2^(mbits+1)] gives the code directly:
//     code = ((e - emin) << mbits) + r
// because a normal value 2^e (1 + m / 2^mbits) has code ((e + bias) << mbits) + m, and
// e - emin = e + bias - 1 absorbs the implicit bit; a subnormal (e = emin) has code r; and a
// carry (r = 2^(mbits+1)) lands on the next binade's first code. Since the format's max is
// a grid point and a <= max, no rounding passes it, so there is nothing to saturate after.
#pragma once
#include "lowprec/formats.h"
#include "simd.h"

namespace lowprec::simd {

// The format's constants, splatted once: built inside the loop, GCC 12 assembles integer splats
// through the stack, and the 64-byte reload after 8-byte stores stalls every iteration.
struct ElementCoder {
  vf max;
  vi emin, nan_code, exp_bias;    // exp_bias = 127 + mbits: 2^(mbits - e) has exponent field exp_bias - e
  int32_t mbits, sign_shift;

  explicit ElementCoder(const Minifloat& f)
      : max(splat(f.max)), emin(splat_i(1 - f.bias)), nan_code(splat_i(f.nan_code >= 0 ? f.nan_code : 0)),
        exp_bias(splat_i(127 + f.mbits)), mbits(f.mbits), sign_shift(f.ebits + f.mbits) {}
};

// Codes of xs (already divided by the block scale). rand: the Philox bytes (stochastic only).
// value (optional): the rounded grid value with xs's sign (NaN where xs is NaN).
template <int Mode>
LOWPREC_INLINE vi encode(vf xs, const ElementCoder& c, vi rand, vf* value) {
  const vi bits = as_i(xs);
  vf a = abs(xs);
  a = (a > c.max) ? c.max : a;                              // NaN compares false: stays NaN
  vi e = (as_i(a) >> 23) - 127;
  e = (e < c.emin) ? c.emin : e;
  const vf q = a * as_f((c.exp_bias - e) << 23);             // a / ulp, exact
  vi r;
  if constexpr (Mode == kNearest) {
    const vf rq = (q + 8388608.0f) - 8388608.0f;             // rint, ties to even (q < 2^23)
    r = __builtin_convertvector(rq, vi);
  } else if constexpr (Mode == kStochastic) {
    // floor(q) + [floor(frac(q) * 256) + rand >= 256], from t = floor(q * 256) (q * 256 exact)
    const vi t = __builtin_convertvector(q * 256.0f, vi);
    r = (t >> 8) + (((t & 255) + rand) >> 8);
  } else if constexpr (Mode == kUp) {
    const vi t = __builtin_convertvector(q, vi);
    r = t - (__builtin_convertvector(t, vf) < q);            // ceil (q >= 0): true lanes are -1
  } else {
    r = __builtin_convertvector(q, vi);                      // floor (q >= 0)
  }
  const vi nan = (a != a);
  if (value) {
    const vf v = __builtin_convertvector(r, vf) * as_f((e - c.mbits + 127) << 23);
    *value = nan ? xs : as_f(as_i(v) | (bits & static_cast<int32_t>(0x80000000u)));
  }
  vi code = ((e - c.emin) << c.mbits) + r;
  code |= ((vi)((vu)bits >> 31)) << c.sign_shift;
  return nan ? c.nan_code : code;
}

}  // namespace lowprec::simd
