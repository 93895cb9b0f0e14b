// Fused CPU quantizers: x (fp32 or bf16, [Bt, M, N]) -> block amax -> scale -> element codes
// (quantize_panels, packed for 4-bit formats) or dequantized values (fake_quantize_panels), in
// one pass per panel, 16 lanes at a time (csrc/cpu/element_simd.h), with the stochastic bits
// drawn inline from Philox at x's flat index and the tensor scale computed in the kernel.
// Bit-exact with lowprec/reference; panels.h describes the three block geometries.
#include "aten.h"

#include <atomic>
#include <utility>
#include <vector>

#include "element_simd.h"
#include "lowprec/formats.h"
#include "large_empty.h"
#include "lowprec/params.h"
#include "panels.h"
#include "philox_simd.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "Philox bytes are copied as little-endian words");

namespace lowprec {

namespace {

using namespace simd;

struct QuantJob {
  PanelGeometry g;
  BlockFormat fmt;
  ElementCoder coder;
  float s_enc;
  int rounding;
  uint64_t seed, offset;
  bool inverse_multiply;   // x * min(1 / s, fp32 max): reciprocal division, or power-of-two scales (exact)
  const float* scale_table;
  const float* x32;
  const uint16_t* x16;     // bf16 input, or null
  bool unit_stride;        // x is contiguous; else read through stride (elements, per dim)
  int64_t stride[3];
  // quantize outputs
  uint8_t* codes;
  bool packed;
  uint8_t* scale_codes;
  float* scale_fp32;
  // set when a NaN/Inf block meets a scale format without a NaN code (an error, raised by run)
  std::atomic<bool>* unmarkable_nan;
  // fake-quantize outputs
  float* x_hat;
  float* s_eff_out;
  float* amax_out;
  // MS-EDEN (rounding id kMsEdenRounding): elements round to nearest under the block scale, then
  // each block's scale code is corrected (ms_eden_groups); S_enc is that of twice the amax
  bool ms_eden = false;
};

// The rounding id of MS-EDEN in the panel kernels' interface (lowprec/_backends/panels.py).
constexpr int64_t kMsEdenRounding = 4;

struct Scratch {
  std::vector<float> x, s, inv_s, amax, out;
  std::vector<int32_t> colmax;
  std::vector<float> group_amax, group_s, group_inv, group_true_amax;
  std::vector<const float*> rows;
  std::vector<uint8_t> codes, rand;
  std::vector<float> block, work;   // Four Over Six: one block's elements in block order, its error tree
  // MS-EDEN: the corrected s_eff of each group and per column (x_hat = v * s_out); the Philox
  // window of 16 counters (256 bytes) the last block byte came from
  std::vector<float> s_out, group_s_out;
  std::vector<int32_t> group_code;           // each group's amax scale code (block_scales records it)
  std::vector<float> group_num, group_den;   // its dot products <x, x>, <x, v s_eff>
  // Four Over Six: each group's amax -> 4 scale (code, s_eff), and the error trees of 16 groups
  // side by side (cols: lane l = group q0 + l)
  std::vector<int32_t> group_code4;
  std::vector<float> group_s4, lane_work;
  int64_t eden_counter = -1;
  uint8_t eden_bytes[256];
  explicit Scratch(const PanelGeometry& g)
      : x(g.bm * g.ld), s(g.ld), inv_s(g.ld), amax(g.ld), out(g.ld), colmax(g.ld), group_amax(g.ld), group_s(g.ld), group_inv(g.ld), group_true_amax(g.ld), rows(g.bm), codes(g.bm * g.ld),
        rand(g.bm * g.ld + 16 + 256 + kLoadBytesReach), block(g.bm * g.gw), work(2 * pow2_at_least(g.bm * g.gw)), s_out(g.ld), group_s_out(g.ld), group_code(g.ld), group_num(g.ld), group_den(g.ld),
        group_code4(g.ld), group_s4(g.ld), lane_work(2 * pow2_at_least(std::max<int64_t>(g.bm, g.bm * g.gw / 16)) * 16) {}
  static int64_t pow2_at_least(int64_t n) {
    int64_t w = 1;
    while (w < n) w *= 2;
    return w;
  }
};

LOWPREC_INLINE float bf16_value(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// Row pointers of the panel: straight into x where a row segment is whole fp32 data, else
// into the scratch, converted from bf16 and zero-padded to the scratch row length.
LOWPREC_INLINE void load_panel(const QuantJob& j, Scratch& sc, int64_t b, int64_t m0, int64_t n0, int64_t rows,
                               int64_t cols) {
  const PanelGeometry& g = j.g;
  for (int64_t i = 0; i < g.bm; ++i) {
    float* dst = sc.x.data() + i * g.ld;
    sc.rows[i] = dst;
    int64_t k = 0;
    if (i < rows && !j.unit_stride) {   // strided view (a transpose): gathered below
      for (; k < cols; ++k) {
        const int64_t src = b * j.stride[0] + (m0 + i) * j.stride[1] + (n0 + k) * j.stride[2];
        dst[k] = j.x16 ? bf16_value(j.x16[src]) : j.x32[src];
      }
    } else if (i < rows) {
      const int64_t src = (b * g.M + m0 + i) * g.N + n0;
      if (j.x16) {
        for (; k < cols; ++k) dst[k] = bf16_value(j.x16[src + k]);
      } else if (cols == g.ld) {
        sc.rows[i] = j.x32 + src;
        continue;
      } else {
        memcpy(dst, j.x32 + src, cols * sizeof(float));
        k = cols;
      }
    }
    for (; k < g.ld; ++k) dst[k] = 0.0f;
  }
}

// Effective scale of a block (the divisor of its elements) from its amax; writes its stored scale.
inline float block_scale(const QuantJob& j, float amax, int64_t scale_index) {
  if (j.fmt.scale_kind == kFp32Scale) {
    const float dec = high_precision_scale(amax, j.fmt, j.s_enc);
    if (j.scale_fp32) j.scale_fp32[scale_index] = dec;
    return effective_scale(dec, j.fmt, j.s_enc);
  }
  if (!std::isfinite(amax) && j.fmt.scale_kind == kMinifloatScale && j.fmt.scale.nan_code < 0) {
    j.unmarkable_nan->store(true, std::memory_order_relaxed);   // raised after the parallel region
    return 1.0f;
  }
  const uint32_t code = scale_code(amax, j.fmt, j.s_enc);
  if (j.scale_codes) j.scale_codes[scale_index] = static_cast<uint8_t>(code);
  return effective_scale(j.scale_table[code], j.fmt, j.s_enc);
}

// Where the panel's first column group stores its scale, and the step to the next group.
inline std::pair<int64_t, int64_t> scale_slots(const PanelGeometry& g, int64_t b, int64_t pm, int64_t m0,
                                               int64_t n0) {
  if (g.mode == kRows) return {(b * g.M + m0) * g.groups + n0 / g.gw, 1};
  if (g.mode == kCols) return {(b * g.N + n0) * g.panels + pm, g.panels};
  return {(b * g.panels + pm) * g.groups + n0 / g.gw, 1};
}

// Scales of the panel's column groups from their amaxes (sc.group_amax -> sc.group_s), stored
// at slot.first + q * slot.second, 16 groups at a time where the scale kind has a vector form:
//   e8m0 floor: shared exponent floor(log2 a) - emax_elem (a = amax; e8m0 takes no tensor
//     scale) clamped to [-127, 127], a = 0 giving -127; floor(log2 a) is the exponent field of
//     a normal a, and the value of code c >= 1 is 2^(c - 127) (code 0: the table's 2^-127);
//   minifloat: (amax / elem_max) * S_enc through the element encoder (scale_code in formats.h).
// Lanes outside the vector form (non-finite amaxes, e8m0 subnormal ones), the other kinds and
// rules, and the last < 16 groups take the scalar block_scale.
LOWPREC_INLINE void block_scales(const QuantJob& j, Scratch& sc, int64_t n_groups, std::pair<int64_t, int64_t> slot) {
  float* gamax = sc.group_amax.data();
  float* gs = sc.group_s.data();
  const bool e8m0 = j.fmt.scale_kind == kE8M0 && j.fmt.rule == kFloor;
  const bool minifloat = j.fmt.scale_kind == kMinifloatScale;
  const ElementCoder scoder(minifloat ? j.fmt.scale : Minifloat{});
  const vi emax = splat_i(j.fmt.elem_emax + 127);
  int64_t q = 0;
  for (; (e8m0 || minifloat) && q + W <= n_groups; q += W) {
    const vf amax = load(gamax + q);
    vi code, scalar;
    vf value;
    if (e8m0) {
      const vf a = amax;   // e8m0 scales take no tensor scale (QuantFormat refuses it)
      const vi field = as_i(a) >> 23;   // a >= 0
      vi shared = (as_i(a) == 0) ? splat_i(-127) : field - emax;
      shared = (shared < -127) ? splat_i(-127) : shared;
      shared = (shared > 127) ? splat_i(127) : shared;
      code = shared + 127;
      value = (code == 0) ? splat(j.scale_table[0]) : as_f(code << 23);
      scalar = ((field == 0) & (as_i(a) != 0)) | (field == 255);
    } else {
      const vf hp = j.fmt.division == kReciprocal ? amax * (j.s_enc * (1.0f / j.fmt.elem.max))
                                                  : (amax / j.fmt.elem.max) * j.s_enc;
      code = j.fmt.scale_rounding == kUp ? encode<kUp>(hp, scoder, splat_i(0), &value)
                                         : encode<kNearest>(hp, scoder, splat_i(0), &value);
      scalar = (abs_bits(amax) >= 0x7F800000);   // Inf or NaN
    }
    store(gs + q, j.fmt.division == kReciprocal ? value * (1.0f / j.s_enc) : value / j.s_enc);
    if (j.ms_eden) memcpy(sc.group_code.data() + q, &code, sizeof code);
    for (int l = 0; l < W; ++l) {
      const int64_t at = slot.first + (q + l) * slot.second;
      if (scalar[l]) gs[q + l] = block_scale(j, gamax[q + l], at);
      else if (j.scale_codes) j.scale_codes[at] = static_cast<uint8_t>(code[l]);
      if (scalar[l] && j.ms_eden) sc.group_code[q + l] = static_cast<int32_t>(scale_code(gamax[q + l], j.fmt, j.s_enc));
    }
  }
  for (; q < n_groups; ++q) {
    gs[q] = block_scale(j, gamax[q], slot.first + q * slot.second);
    if (j.ms_eden) sc.group_code[q] = static_cast<int32_t>(scale_code(gamax[q], j.fmt, j.s_enc));
  }
}

// The first four levels of the pairwise tree of 16 consecutive values: their sum in the tree's order.
LOWPREC_INLINE float pairwise_sum16(vf e) {
  static_assert(W == 16, "the tree below is written for 16 lanes");
  vf t = __builtin_shufflevector(e, e, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(e, e, 1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
  t = __builtin_shufflevector(t, t, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6) +
      __builtin_shufflevector(t, t, 1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7);
  t = __builtin_shufflevector(t, t, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2) +
      __builtin_shufflevector(t, t, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3);
  return t[0] + t[1];
}

// The round-to-nearest grid values of x / s, 16 lanes (the values code_row codes): x * inv
// with reciprocal division (inv = element_multiplier(s)), else x / s; 0 where s is 0.
LOWPREC_INLINE vf rtn_values(const QuantJob& j, vf x, vf s, vf inv) {
  vf xs = j.fmt.division == kReciprocal ? x * inv : x / s;
  xs = (s == 0.0f) ? splat(0.0f) : xs;
  vf v;
  encode<kNearest>(xs, j.coder, splat_i(0), &v);
  return v;
}

// element_multiplier lane by lane: min(fp32(1 / s), fp32 max).
LOWPREC_INLINE vf lane_multiplier(vf s) {
  const vf inv = splat(1.0f) / s;
  return (inv > splat(kFp32Max)) ? splat(kFp32Max) : inv;
}

// The rest of the pairwise tree over n partial sums in work (zero-padded to a power of two;
// work holds that many floats): their sum.
LOWPREC_INLINE float tree_sum(float* work, int64_t n) {
  int64_t width = 1;
  while (width < n) width *= 2;
  for (int64_t t = n; t < width; ++t) work[t] = 0.0f;
  for (; width > 1; width /= 2)
    for (int64_t t = 0; t < width / 2; ++t) work[t] = work[2 * t] + work[2 * t + 1];
  return work[0];
}

// The pairwise tree over n vectors in work (16 trees side by side, zero-padded to a power of
// two vectors; work holds that many): the 16 sums.
LOWPREC_INLINE vf lane_tree_sum(float* work, int64_t n) {
  int64_t width = 1;
  while (width < n) width *= 2;
  for (int64_t i = n; i < width; ++i) store(work + i * W, splat(0.0f));
  for (; width > 1; width /= 2)
    for (int64_t t = 0; t < width / 2; ++t) store(work + t * W, load(work + 2 * t * W) + load(work + (2 * t + 1) * W));
  return load(work);
}

// Pairwise sums of 16 vectors at once: lane l of the result is pairwise_sum16(e[l]), the same
// additions in the same order, done on 16 vectors side by side (each level adds the even and
// odd entries of two vectors, halving their number).
LOWPREC_INLINE vf pairwise_sums16(const vf* e) {
  vf a[8], b[4], c[2];
  for (int k = 0; k < 8; ++k)
    a[k] = __builtin_shufflevector(e[2 * k], e[2 * k + 1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(e[2 * k], e[2 * k + 1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int k = 0; k < 4; ++k)
    b[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int k = 0; k < 2; ++k)
    c[k] = __builtin_shufflevector(b[2 * k], b[2 * k + 1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(b[2 * k], b[2 * k + 1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// Block sums of the 16 groups q0 .. q0 + 15 of whole vectors (rows and tiles of 16 or more),
// lane l for group q0 + l: term(x, l) gives the terms of one 16-element chunk of the group's
// block, the chunks in block order; each chunk summed by pairwise_sums16, the chunks by the
// rest of the tree (lane_tree_sum). The same sums group_rtn_error and group_eden_sums form one
// group at a time.
template <class Term>
LOWPREC_INLINE vf lane_group_sums(const QuantJob& j, const Scratch& sc, int64_t q0, float* work, Term term) {
  const int64_t bm = j.g.bm, gw = j.g.gw;
  vf e[W];
  for (int64_t i = 0; i < bm; ++i) {
    for (int64_t k = 0; k < gw; k += W) {
      for (int l = 0; l < W; ++l) e[l] = term(load(sc.rows[i] + (q0 + l) * gw + k), l);
      store(work + (i * gw + k) / W * W, pairwise_sums16(e));
    }
  }
  return lane_tree_sum(work, bm * gw / W);
}

// The round-to-nearest error of group q under s_eff (formats.h, rtn_block_error), with the
// elements 16 lanes at a time (groups of whole vectors: rows and tiles of 16 or more): the
// per-element errors are stored in block order, then summed by the same pairwise tree.
LOWPREC_INLINE float group_rtn_error(const QuantJob& j, const Scratch& sc, int64_t q, float s, float* work) {
  const int64_t bm = j.g.bm, gw = j.g.gw, n = bm * gw / W;   // n: 16-element chunks, in block order
  const vf sv = splat(s), inv = splat(element_multiplier(s));
  const bool mse = j.fmt.four_over_six == kFourOverSixMse;
  for (int64_t i = 0; i < bm; ++i) {
    for (int64_t k = 0; k < gw; k += W) {
      const vf x = load(sc.rows[i] + q * gw + k);
      const vf d = x - rtn_values(j, x, sv, inv) * sv;
      work[(i * gw + k) / W] = pairwise_sum16(mse ? d * d : abs(d));
    }
  }
  return tree_sum(work, n);
}

// The amax -> 4 scale of every group (Four Over Six's alternative; formats.h, scale_code with
// target 4): code in group_code4, s_eff in group_s4, 16 groups at a time through the scale
// encoder as block_scales does for the amax -> 6 one. Lanes with a non-finite amax are not
// read (Four Over Six keeps their scales).
LOWPREC_INLINE void alternative_scales(const QuantJob& j, Scratch& sc, int64_t n_groups) {
  const ElementCoder scoder(j.fmt.scale);
  const float* gamax = sc.group_amax.data();
  const bool reciprocal = j.fmt.division == kReciprocal;
  int64_t q = 0;
  for (; q + W <= n_groups; q += W) {
    const vf amax = load(gamax + q);
    const vf hp = reciprocal ? amax * (j.s_enc * (1.0f / kFourOverSixAlt)) : (amax / kFourOverSixAlt) * j.s_enc;
    vf value;
    const vi code = j.fmt.scale_rounding == kUp ? encode<kUp>(hp, scoder, splat_i(0), &value)
                                                : encode<kNearest>(hp, scoder, splat_i(0), &value);
    store(sc.group_s4.data() + q, reciprocal ? value * (1.0f / j.s_enc) : value / j.s_enc);
    memcpy(sc.group_code4.data() + q, &code, sizeof code);
  }
  for (; q < n_groups; ++q) {
    if (!std::isfinite(gamax[q])) continue;
    const uint32_t code4 = scale_code(gamax[q], j.fmt, j.s_enc, kFourOverSixAlt);
    sc.group_code4[q] = static_cast<int32_t>(code4);
    sc.group_s4[q] = effective_scale(j.scale_table[code4], j.fmt, j.s_enc);
  }
}

// The round-to-nearest errors of 16 column groups side by side (cols mode: group q0 + l is
// column q0 + l, its block the panel's bm rows) under the lane scales s: per row the element
// errors of the 16 groups, then the pairwise tree over the rows, zero-padded to a power of two
// (formats.h, rtn_block_error, lane by lane). ``work`` holds that power of two vectors.
LOWPREC_INLINE vf lane_rtn_errors(const QuantJob& j, const Scratch& sc, int64_t q0, vf s, float* work) {
  const vf inv = lane_multiplier(s);
  const bool mse = j.fmt.four_over_six == kFourOverSixMse;
  for (int64_t i = 0; i < j.g.bm; ++i) {
    const vf x = load(sc.rows[i] + q0);
    const vf d = x - rtn_values(j, x, s, inv) * s;
    store(work + i * W, mse ? d * d : abs(d));
  }
  return lane_tree_sum(work, j.g.bm);
}

// Four Over Six over the panel's column groups (formats.h, four_over_six): each block's scale
// code and s_eff replaced where the amax -> 4 scale has the lower round-to-nearest error, its
// elements taken in the reference's block order (rows: along the row; cols: down the column;
// tiles: row-major in the tile; padding is zero). Cols panels compare 16 groups at a time
// (lane_rtn_errors), groups of whole vectors one at a time (group_rtn_error), the rest
// element by element (formats.h).
LOWPREC_INLINE void four_over_six_groups(const QuantJob& j, Scratch& sc, int64_t n_groups,
                                         std::pair<int64_t, int64_t> slot) {
  const int64_t bm = j.g.bm, gw = j.g.gw;
  float* blk = sc.block.data();
  float* work = sc.work.data();
  alternative_scales(j, sc, n_groups);
  int64_t q0 = 0;
  if (gw == 1 || gw % W == 0) {            // 16 groups at a time, one per lane
    const bool mse = j.fmt.four_over_six == kFourOverSixMse;
    for (; q0 + W <= n_groups; q0 += W) {
      vf e6, e4;
      if (gw == 1) {                       // cols: the group's block runs down the rows
        e6 = lane_rtn_errors(j, sc, q0, load(sc.group_s.data() + q0), sc.lane_work.data());
        e4 = lane_rtn_errors(j, sc, q0, load(sc.group_s4.data() + q0), sc.lane_work.data());
      } else {                             // rows, tiles: each group whole vectors
        for (int pass = 0; pass < 2; ++pass) {
          const float* sq = (pass == 0 ? sc.group_s : sc.group_s4).data() + q0;
          vf sv[W], iv[W];
          for (int l = 0; l < W; ++l) {
            sv[l] = splat(sq[l]);
            iv[l] = splat(element_multiplier(sq[l]));
          }
          const vf e = lane_group_sums(j, sc, q0, sc.lane_work.data(), [&](vf x, int l) {
            const vf d = x - rtn_values(j, x, sv[l], iv[l]) * sv[l];
            return mse ? d * d : abs(d);
          });
          (pass == 0 ? e6 : e4) = e;
        }
      }
      for (int l = 0; l < W; ++l) {
        const int64_t q = q0 + l;
        if (std::isfinite(sc.group_amax[q]) && e4[l] < e6[l]) {
          sc.group_s[q] = sc.group_s4[q];
          if (j.scale_codes) j.scale_codes[slot.first + q * slot.second] = static_cast<uint8_t>(sc.group_code4[q]);
        }
      }
    }
  }
  for (int64_t q = q0; q < n_groups; ++q) {
    const int64_t at = slot.first + q * slot.second;
    const float amax = sc.group_amax[q];
    if (gw % W == 0) {                     // vector form, same arithmetic as four_over_six
      if (!std::isfinite(amax)) continue;
      const float e6 = group_rtn_error(j, sc, q, sc.group_s[q], work);
      const float e4 = group_rtn_error(j, sc, q, sc.group_s4[q], work);
      if (e4 < e6) {
        sc.group_s[q] = sc.group_s4[q];
        if (j.scale_codes) j.scale_codes[at] = static_cast<uint8_t>(sc.group_code4[q]);
      }
      continue;
    }
    for (int64_t i = 0; i < bm; ++i)
      for (int64_t k = 0; k < gw; ++k) blk[i * gw + k] = sc.rows[i][q * gw + k];
    uint32_t code = j.scale_codes ? j.scale_codes[at] : scale_code(amax, j.fmt, j.s_enc);
    float s = sc.group_s[q];
    four_over_six(blk, bm * gw, amax, j.fmt, j.s_enc, j.scale_table, &code, &s, work);
    sc.group_s[q] = s;
    if (j.scale_codes) j.scale_codes[at] = static_cast<uint8_t>(code);
  }
}

// QuEST's Gaussian statistic of every column group (formats.h, gaussian_statistic): each
// block gathered in the reference's block order, its amax (kept in group_true_amax, which the
// amax outputs report) replaced by its clipping value for the scale computation.
// Groups of whole vectors (rows and tiles of 16 or more) take the vector form: (x / amax)^2
// 16 lanes at a time, each chunk summed by the first four levels of the pairwise tree, the
// chunks then by the rest of it: the same tree, so the same sum.
LOWPREC_INLINE float group_gaussian_statistic(const QuantJob& j, const Scratch& sc, int64_t q, float amax,
                                              float* work) {
  if (!std::isfinite(amax)) return amax;
  if (amax == 0.0f) return 0.0f;
  const int64_t bm = j.g.bm, gw = j.g.gw, n = bm * gw / W;
  const vf av = splat(amax);
  for (int64_t i = 0; i < bm; ++i) {
    for (int64_t k = 0; k < gw; k += W) {
      const vf y = load(sc.rows[i] + q * gw + k) / av;
      work[(i * gw + k) / W] = pairwise_sum16(y * y);
    }
  }
  const float c = (j.fmt.gaussian_kappa * std::sqrt(tree_sum(work, n) / static_cast<float>(bm * gw))) * amax;
  return c > kFp32Max ? kFp32Max : c;
}

LOWPREC_INLINE void gaussian_groups(const QuantJob& j, Scratch& sc, int64_t n_groups) {
  const int64_t bm = j.g.bm, gw = j.g.gw;
  float* blk = sc.block.data();
  float* work = sc.work.data();
  for (int64_t q = 0; q < n_groups; ++q) {
    const float amax = sc.group_amax[q];
    sc.group_true_amax[q] = amax;
    if (gw % W == 0) {
      sc.group_amax[q] = group_gaussian_statistic(j, sc, q, amax, work);
      continue;
    }
    for (int64_t i = 0; i < bm; ++i)
      for (int64_t k = 0; k < gw; ++k) blk[i * gw + k] = sc.rows[i][q * gw + k];
    sc.group_amax[q] = gaussian_statistic(blk, bm * gw, amax, j.fmt.gaussian_kappa, work);
  }
}

// The Philox byte at flat position ``at`` of the stream (random_bytes(seed, offset, .)[at]):
// byte at % 16 of counter offset + at / 16, from a cached window of 16 counters.
LOWPREC_INLINE uint32_t stream_byte(const QuantJob& j, Scratch& sc, int64_t at) {
  const int64_t c = at / 16;
  if (sc.eden_counter < 0 || c < sc.eden_counter || c >= sc.eden_counter + 16) {
    philox_256_bytes(j.seed, j.offset + static_cast<uint64_t>(c), sc.eden_bytes);
    sc.eden_counter = c;
  }
  return sc.eden_bytes[at - sc.eden_counter * 16];
}

// MS-EDEN's dot products of group q (formats.h, ms_eden_block_sums) for groups of whole
// vectors: 16 lanes at a time, each chunk summed by the first four levels of the pairwise
// tree, the chunks by the rest of it (the same tree, so the same sums).
LOWPREC_INLINE void group_eden_sums(const QuantJob& j, const Scratch& sc, int64_t q, float s, float* work,
                                    float* num, float* den) {
  const int64_t bm = j.g.bm, gw = j.g.gw, n = bm * gw / W;
  float* work_den = work + Scratch::pow2_at_least(n);
  const vf sv = splat(s), inv = splat(element_multiplier(s));
  for (int64_t i = 0; i < bm; ++i) {
    for (int64_t k = 0; k < gw; k += W) {
      const vf x = load(sc.rows[i] + q * gw + k);
      work[(i * gw + k) / W] = pairwise_sum16(x * x);
      work_den[(i * gw + k) / W] = pairwise_sum16(x * (rtn_values(j, x, sv, inv) * sv));
    }
  }
  *num = tree_sum(work, n);
  *den = tree_sum(work_den, n);
}

// MS-EDEN's dot products of 16 column groups side by side (cols mode: group q0 + l is column
// q0 + l, its block the panel's bm rows), per row for the 16 groups, then the pairwise trees
// over the rows, zero-padded to a power of two (formats.h, ms_eden_block_sums, lane by lane).
LOWPREC_INLINE void lane_eden_sums(const QuantJob& j, Scratch& sc, int64_t q0) {
  const int64_t bm = j.g.bm;
  float* wn = sc.lane_work.data();
  float* wd = wn + Scratch::pow2_at_least(bm) * W;
  const vf s = load(sc.group_s.data() + q0), inv = lane_multiplier(s);
  for (int64_t i = 0; i < bm; ++i) {
    const vf x = load(sc.rows[i] + q0);
    store(wn + i * W, x * x);
    store(wd + i * W, x * (rtn_values(j, x, s, inv) * s));
  }
  store(sc.group_num.data() + q0, lane_tree_sum(wn, bm));
  store(sc.group_den.data() + q0, lane_tree_sum(wd, bm));
}

// MS-EDEN over the panel's column groups: each block's scale code (that of its amax, as
// block_scales chose it) corrected by EDEN's factor and rounded stochastically onto the scale
// grid with the Philox byte of its flat index in the stored scales (formats.h,
// ms_eden_scale_code; here 16 groups at a time through the scale encoder, whose stochastic
// rounding is the same). The elements keep the codes of the original scale (group_s);
// group_s_out gets the corrected s_eff. Blocks with a NaN or Inf keep their scale.
LOWPREC_INLINE void ms_eden_groups(const QuantJob& j, Scratch& sc, int64_t n_groups, std::pair<int64_t, int64_t> slot) {
  const int64_t bm = j.g.bm, gw = j.g.gw;
  float* blk = sc.block.data();
  float* work = sc.work.data();
  int64_t q = 0;
  if (gw == 1) {
    for (; q + W <= n_groups; q += W) lane_eden_sums(j, sc, q);
  } else if (gw % W == 0) {               // rows, tiles: 16 groups of whole vectors at a time
    for (; q + W <= n_groups; q += W) {
      vf sv[W], iv[W];
      for (int l = 0; l < W; ++l) {
        sv[l] = splat(sc.group_s[q + l]);
        iv[l] = splat(element_multiplier(sc.group_s[q + l]));
      }
      store(sc.group_num.data() + q, lane_group_sums(j, sc, q, sc.lane_work.data(), [&](vf x, int) { return x * x; }));
      store(sc.group_den.data() + q, lane_group_sums(j, sc, q, sc.lane_work.data(), [&](vf x, int l) {
        return x * (rtn_values(j, x, sv[l], iv[l]) * sv[l]);
      }));
    }
  }
  for (; q < n_groups; ++q) {
    if (!std::isfinite(sc.group_amax[q])) continue;
    if (gw % W == 0) {
      group_eden_sums(j, sc, q, sc.group_s[q], work, &sc.group_num[q], &sc.group_den[q]);
    } else {
      for (int64_t i = 0; i < bm; ++i)
        for (int64_t k = 0; k < gw; ++k) blk[i * gw + k] = sc.rows[i][q * gw + k];
      ms_eden_block_sums(blk, bm * gw, sc.group_s[q], j.fmt, work, &sc.group_num[q], &sc.group_den[q]);
    }
  }
  const ElementCoder scoder(j.fmt.scale);
  const bool reciprocal = j.fmt.division == kReciprocal;
  q = 0;
  for (; q + W <= n_groups; q += W) {
    const vf amax = load(sc.group_amax.data() + q), num = load(sc.group_num.data() + q);
    const vf den = load(sc.group_den.data() + q);
    vi code, rand;
    memcpy(&code, sc.group_code.data() + q, sizeof code);
    vf dec;
    for (int l = 0; l < W; ++l) {
      dec[l] = j.scale_table[code[l]];
      rand[l] = static_cast<int32_t>(stream_byte(j, sc, slot.first + (q + l) * slot.second));
    }
    const vf c = (den > 0.0f) ? num / ((den > 0.0f) ? den : splat(1.0f)) : splat(1.0f);
    const vf t = dec * c;
    const vi keep = (abs_bits(t) >= 0x7F800000) | (abs_bits(amax) >= 0x7F800000);
    vf value;
    vi fixed = encode<kStochastic>((keep != 0) ? splat(0.0f) : t, scoder, rand, &value);
    fixed = keep ? code : fixed;
    const vf s_new = reciprocal ? value * (1.0f / j.s_enc) : value / j.s_enc;
    store(sc.group_s_out.data() + q, keep ? load(sc.group_s.data() + q) : s_new);
    if (j.scale_codes)
      for (int l = 0; l < W; ++l) j.scale_codes[slot.first + (q + l) * slot.second] = static_cast<uint8_t>(fixed[l]);
  }
  for (; q < n_groups; ++q) {
    const int64_t at = slot.first + q * slot.second;
    const float amax = sc.group_amax[q];
    sc.group_s_out[q] = sc.group_s[q];
    if (!std::isfinite(amax)) continue;
    const uint32_t code = static_cast<uint32_t>(sc.group_code[q]);
    const uint32_t fixed = ms_eden_scale_code(sc.group_num[q], sc.group_den[q], j.scale_table[code], amax, code,
                                              j.fmt.scale, stream_byte(j, sc, at));
    if (j.scale_codes) j.scale_codes[at] = static_cast<uint8_t>(fixed);
    sc.group_s_out[q] = effective_scale(j.scale_table[fixed], j.fmt, j.s_enc);
  }
}

// Column amaxes over the panel's rows, then one scale per column group, spread over its columns.
LOWPREC_INLINE void panel_scales(const QuantJob& j, Scratch& sc, int64_t b, int64_t pm, int64_t m0, int64_t n0,
                         int64_t width) {
  const PanelGeometry& g = j.g;
  int32_t* colmax = sc.colmax.data();   // |x| bit patterns
  for (int64_t k = 0; k < g.ld; k += W) {
    vi m = splat_i(0);
    for (int64_t i = 0; i < g.bm; ++i) m = max_i(m, abs_bits(load(sc.rows[i] + k)));
    memcpy(colmax + k, &m, sizeof m);
  }
  const int64_t n_groups = width / g.gw;
  float* gamax = sc.group_amax.data();
  int64_t q0 = 0;
  if (g.gw % W == 0) {   // 16 groups at a time: lane l of one vector = max of group q0 + l
    for (; q0 + W <= n_groups; q0 += W) {
      vi m[W];
      for (int l = 0; l < W; ++l) {
        const int32_t* cm = colmax + (q0 + l) * g.gw;
        memcpy(&m[l], cm, sizeof(vi));
        for (int64_t k = W; k < g.gw; k += W) {
          vi c;
          memcpy(&c, cm + k, sizeof c);
          m[l] = max_i(m[l], c);
        }
      }
      store(gamax + q0, as_f(transpose_max(m)));
    }
  }
  for (int64_t q = q0; q < n_groups; ++q) {
    const int32_t* cm = colmax + q * g.gw;
    int32_t amax_bits = 0;
    if (g.gw % W == 0) {
      vi m = splat_i(0);
      for (int64_t k = 0; k < g.gw; k += W) {
        vi c;
        memcpy(&c, cm + k, sizeof c);
        m = max_i(m, c);
      }
      amax_bits = hmax_i(m);
    } else {
      for (int64_t k = 0; k < g.gw; ++k) amax_bits = cm[k] > amax_bits ? cm[k] : amax_bits;
    }
    gamax[q] = bits_to_float(static_cast<uint32_t>(amax_bits));
  }
  if (j.fmt.scale_statistic == kStatGaussian) gaussian_groups(j, sc, n_groups);
  block_scales(j, sc, n_groups, scale_slots(g, b, pm, m0, n0));
  if (j.fmt.scale_statistic == kStatGaussian) std::copy(sc.group_true_amax.begin(), sc.group_true_amax.begin() + n_groups, sc.group_amax.begin());
  if (j.fmt.four_over_six != kFourOverSixOff) four_over_six_groups(j, sc, n_groups, scale_slots(g, b, pm, m0, n0));
  if (j.ms_eden) ms_eden_groups(j, sc, n_groups, scale_slots(g, b, pm, m0, n0));
  const float* gso = j.ms_eden ? sc.group_s_out.data() : sc.group_s.data();   // x_hat's multiplier
  // Per-group scale inverses; with groups of whole vectors code_row reads the group values
  // directly, else (and for the per-element s_eff / amax outputs) they are spread over columns.
  const float* gs = sc.group_s.data();
  float* ginv = sc.group_inv.data();
  for (int64_t q = 0; q < n_groups; ++q) ginv[q] = j.inverse_multiply ? element_multiplier(gs[q]) : 1.0f;
  if (g.gw % W == 0 && !j.amax_out) {
    // one splatted vector per group (and a unit one after the last), which code_row loads:
    // from a scalar splat GCC 12 scalarizes the s == 0 select lane by lane
    for (int64_t q = 0; q <= n_groups && q * W < g.ld; ++q) {
      store(sc.s.data() + q * W, splat(q < n_groups ? gs[q] : 1.0f));
      store(sc.inv_s.data() + q * W, splat(q < n_groups ? ginv[q] : 1.0f));
      if (j.ms_eden) store(sc.s_out.data() + q * W, splat(q < n_groups ? gso[q] : 1.0f));
    }
    return;
  }
  // (locals: the stores must not make the compiler reload sc's buffers)
  float* s_col = sc.s.data();
  float* inv_col = sc.inv_s.data();
  float* amax_col = j.amax_out ? sc.amax.data() : nullptr;   // only fake_quantize with_scales reads it
  float* out_col = j.ms_eden ? sc.s_out.data() : nullptr;
  const int64_t gw = g.gw;
  for (int64_t q = 0; q < n_groups; ++q) {
    const float s = gs[q], amax = gamax[q], inv = ginv[q];
    const vf sv = splat(s), iv = splat(inv), av = splat(amax);
    int64_t k = q * gw;
    for (; k + W <= (q + 1) * gw; k += W) {
      store(s_col + k, sv);
      store(inv_col + k, iv);
      if (amax_col) store(amax_col + k, av);
      if (out_col) store(out_col + k, splat(gso[q]));
    }
    for (; k < (q + 1) * gw; ++k) {
      s_col[k] = s;
      inv_col[k] = inv;
      if (amax_col) amax_col[k] = amax;
      if (out_col) out_col[k] = gso[q];
    }
  }
  for (int64_t k = width; k < g.ld; ++k) {
    s_col[k] = 1.0f;
    inv_col[k] = 1.0f;
    if (amax_col) amax_col[k] = 0.0f;
    if (out_col) out_col[k] = 1.0f;
  }
}

// Row i of the panel through the element coder: x_hat into out_row (fake), or codes straight
// into the stored row (rows and tiles: the first `width` codes of dst, packed or not), or
// into the scratch (cols, transposed afterwards by emit_codes).
template <int Mode, bool Fake>
LOWPREC_INLINE void code_row(const QuantJob& j, Scratch& sc, int64_t i, const uint8_t* rand, float* out_row,
                             uint8_t* dst, int64_t width) {
  // locals, not fields of j: the byte stores below may alias j, which would force reloads
  const int64_t ld = j.g.ld, gw = j.g.gw;
  const ElementCoder coder = j.coder;
  const bool inverse = j.inverse_multiply, packed = j.packed;
  const bool grouped = gw % W == 0 && !j.amax_out;   // scales per group (panel_scales did not spread them)
  const float* xr = sc.rows[i];
  const float* sv = sc.s.data();
  const float* iv = sc.inv_s.data();
  const float* ov = j.ms_eden ? sc.s_out.data() : sv;   // x_hat = v * s_out (MS-EDEN's corrected s_eff)
  uint8_t* cb = sc.codes.data() + i * ld;
  vf s = splat(1.0f), inv = splat(1.0f), s_out = splat(1.0f);
  for (int64_t k = 0, q = 0, next = 0; k < ld; k += W) {
    const vf x = load(xr + k);
    if (!grouped) {
      s = load(sv + k);
      inv = load(iv + k);
      if constexpr (Fake) s_out = load(ov + k);
    } else if (k == next) {   // the first vector of group q (q = n_groups: the padding after them)
      s = load(sv + q * W);
      inv = load(iv + q * W);
      if constexpr (Fake) s_out = load(ov + q * W);
      q += k < width;
      next = k < width ? next + gw : ld;
    }
    vf xs = inverse ? x * inv : x / s;
    xs = (s == 0.0f) ? splat(0.0f) : xs;
    const vi r = Mode == kStochastic ? load_bytes(rand + k) : splat_i(0);
    vf v;
    const vi code = encode<Mode>(xs, coder, r, Fake ? &v : nullptr);
    if constexpr (Fake) {
      store(out_row + k, v * s_out);
    } else if (!dst) {
      store_bytes(cb + k, code);
    } else if (packed) {
      const uint64_t p = pack_nibbles(code);
      if (k + W <= width) memcpy(dst + k / 2, &p, 8); else if (k < width) memcpy(dst + k / 2, &p, (width - k) / 2);
    } else {
      uint8_t b[W];
      store_bytes(b, code);
      if (k + W <= width) memcpy(dst + k, b, W); else if (k < width) memcpy(dst + k, b, width - k);
    }
  }
}

// Codes of a cols-mode panel (all bm rows, padding included), transposed into the stored array.
LOWPREC_INLINE void emit_codes(const QuantJob& j, const Scratch& sc, int64_t b, int64_t m0, int64_t n0, int64_t cols) {
  const PanelGeometry& g = j.g;
  const int64_t scols = g.stored_cols(), ldc = j.packed ? scols / 2 : scols;
  const uint8_t* cb = sc.codes.data();
  for (int64_t k = 0; k < cols; ++k) {   // stored row = column n, stored column = m
    uint8_t* out = j.codes + (b * g.N + n0 + k) * ldc;
    if (j.packed) {
      for (int64_t i = 0; i < g.bm; i += 2)
        out[(m0 + i) / 2] = static_cast<uint8_t>(cb[i * g.ld + k] | (cb[(i + 1) * g.ld + k] << 4));
    } else {
      for (int64_t i = 0; i < g.bm; ++i) out[m0 + i] = cb[i * g.ld + k];
    }
  }
}

template <int Mode, bool Fake>
LOWPREC_INLINE void run_item_as(const QuantJob& j, Scratch& sc, int64_t item) {
  const PanelGeometry& g = j.g;
  const int64_t c = item % g.chunks, pm = (item / g.chunks) % g.panels, b = item / (g.chunks * g.panels);
  const int64_t m0 = pm * g.bm, n0 = c * g.cw;
  const int64_t rows = std::min(g.bm, g.M - m0), cols = std::min(g.cw, g.N - n0);
  const int64_t width = std::min(g.cw, g.padded_N() - n0);   // columns of whole groups
  load_panel(j, sc, b, m0, n0, rows, cols);
  panel_scales(j, sc, b, pm, m0, n0, width);
  const int64_t stored_rows = Fake ? rows : g.bm;   // padding rows are stored (cols, tiles)
  // Stochastic bits at x's flat index: one span for the whole panel when its rows are whole
  // (consecutive in the stream), else one span per row. Zero padding rounds to 0 whatever the bits.
  const uint8_t* panel_rand = nullptr;
  if (Mode == kStochastic && g.chunks == 1) {
    panel_rand = philox_span(j.seed, j.offset, (b * g.M + m0) * g.N, (rows - 1) * g.N + g.ld, sc.rand.data());
  }
  for (int64_t i = 0; i < stored_rows; ++i) {
    const uint8_t* rand = nullptr;
    if (Mode == kStochastic) {
      if (i >= rows) rand = sc.rand.data();
      else if (panel_rand) rand = panel_rand + i * g.N;
      else rand = philox_span(j.seed, j.offset, (b * g.M + m0 + i) * g.N + n0, g.ld, sc.rand.data());
    }
    uint8_t* dst = nullptr;
    if (!Fake && g.mode != kCols) {
      const int64_t srow = b * (g.mode == kRows ? g.M : g.padded_M()) + m0 + i;
      dst = j.codes + srow * (j.packed ? g.stored_cols() / 2 : g.stored_cols()) + (j.packed ? n0 / 2 : n0);
    }
    const int64_t o = (b * g.M + m0 + i) * g.N + n0;   // x's flat index of the row's first column
    // x_hat straight into the output when the row segment covers whole vectors, else via scratch
    float* out_row = (Fake && cols == g.ld) ? j.x_hat + o : sc.out.data();
    code_row<Mode, Fake>(j, sc, i, rand, out_row, dst, width);
    if constexpr (Fake) {
      if (out_row != j.x_hat + o) memcpy(j.x_hat + o, out_row, cols * sizeof(float));
      if (j.s_eff_out) {
        memcpy(j.s_eff_out + o, (j.ms_eden ? sc.s_out : sc.s).data(), cols * sizeof(float));
        memcpy(j.amax_out + o, sc.amax.data(), cols * sizeof(float));
      }
    }
  }
  if (!Fake && g.mode == kCols) emit_codes(j, sc, b, m0, n0, cols);
}

// One work item (panel, column chunk); compiled per ISA level, the best picked at load time.
LOWPREC_ISA_CLONES void run_item(const QuantJob& j, Scratch& sc, int64_t item, bool fake) {
  switch (j.rounding * 2 + (fake ? 1 : 0)) {
    case kNearest * 2: run_item_as<kNearest, false>(j, sc, item); break;
    case kNearest * 2 + 1: run_item_as<kNearest, true>(j, sc, item); break;
    case kStochastic * 2: run_item_as<kStochastic, false>(j, sc, item); break;
    case kStochastic * 2 + 1: run_item_as<kStochastic, true>(j, sc, item); break;
    case kZero * 2: run_item_as<kZero, false>(j, sc, item); break;
    default: run_item_as<kZero, true>(j, sc, item); break;
  }
}

// max |x[i]| bit pattern over the finite x[i], i in [0, n) (|x| bit patterns of Inf and NaN
// are >= 0x7F800000 and are skipped, so they never reach the tensor scale).
LOWPREC_ISA_CLONES int32_t max_abs_bits(const float* p32, const uint16_t* p16, int64_t n) {
  vi m = splat_i(0);
  const vi inf = splat_i(0x7F800000);
  int64_t i = 0;
  if (p32) {
    for (; i + W <= n; i += W) {
      const vi a = abs_bits(load(p32 + i));
      m = max_i(m, a & (a < inf));
    }
  }
  int32_t r = hmax_i(m);
  for (; i < n; ++i) {
    const uint32_t b = p32 ? float_to_bits(p32[i]) : static_cast<uint32_t>(p16[i]) << 16;
    const int32_t a = static_cast<int32_t>(b & 0x7FFFFFFFu);
    r = (a > r && a < 0x7F800000) ? a : r;
  }
  return r;
}

// max |x| over the finite elements of the whole tensor (0 when there are none).
float tensor_amax(const at::Tensor& x) {
  const float* p32 = x.scalar_type() == at::kFloat ? x.data_ptr<float>() : nullptr;
  const uint16_t* p16 = p32 ? nullptr : reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const int32_t bits = at::parallel_reduce(
      0, x.numel(), 1 << 16, int32_t{0},
      [&](int64_t begin, int64_t end, int32_t acc) {
        const int32_t r = max_abs_bits(p32 ? p32 + begin : nullptr, p16 ? p16 + begin : nullptr, end - begin);
        return r > acc ? r : acc;
      },
      [](int32_t a, int32_t b) { return a > b ? a : b; });
  return bits_to_float(static_cast<uint32_t>(bits));
}

QuantJob make_job(const at::Tensor& x, const at::Tensor& scale_table, c10::IntArrayRef iparams,
                  c10::ArrayRef<double> fparams, c10::IntArrayRef geometry, const c10::optional<at::Tensor>& amax,
                  int64_t rounding, int64_t seed, int64_t offset, at::Tensor& s_enc_out) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "lowprec panel kernels take an fp32 or bf16 CPU tensor [Bt, M, N] (any strides)");
  TORCH_CHECK(geometry.size() == 2 && geometry[0] >= kRows && geometry[0] <= kTiles && geometry[1] >= 2 &&
                  geometry[1] <= 128 && geometry[1] % 2 == 0,
              "lowprec panel kernels: geometry is [mode (0 rows, 1 cols, 2 tiles), even block size <= 128]");
  TORCH_CHECK(rounding == kNearest || rounding == kStochastic || rounding == kZero || rounding == kMsEdenRounding,
              "lowprec panel kernels: rounding must be nearest (0), stochastic (1), zero (2) or MS-EDEN (4)");
  const bool ms_eden = rounding == kMsEdenRounding;
  if (ms_eden) rounding = kNearest;
  QuantJob j{PanelGeometry(x.size(0), x.size(1), x.size(2), int(geometry[0]), int(geometry[1])),
             block_format_from(iparams, fparams), ElementCoder(Minifloat{}), 1.0f, int(rounding),
             static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), false, nullptr, nullptr, nullptr, true,
             {0, 0, 0}, nullptr, false, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  j.coder = ElementCoder(j.fmt.elem);
  j.ms_eden = ms_eden;
  TORCH_CHECK(!ms_eden || (j.fmt.scale_kind == kMinifloatScale && j.fmt.elem.ebits == 2 && j.fmt.elem.mbits == 1 &&
                           j.fmt.four_over_six == kFourOverSixOff && j.fmt.scale_statistic == kStatAmax),
              "lowprec panel kernels: MS-EDEN takes E2M1 elements with minifloat amax scales");
  TORCH_CHECK(j.fmt.elem.bias <= 126 && j.fmt.elem.mbits <= 20, "lowprec panel kernels: unsupported element format");
  if (j.fmt.tensor_scale) {
    float a;
    if (amax.has_value() && amax->defined()) {
      TORCH_CHECK(amax->numel() == 1, "lowprec: amax must be one value");
      a = amax->to(at::kFloat).item<float>();
    } else {
      a = x.numel() ? tensor_amax(x) : 0.0f;
    }
    if (ms_eden) a = a * 2.0f;   // headroom for the scale correction (reference/ms_eden.py, HEADROOM)
    j.s_enc = tensor_encode_scale(a, j.fmt);
  } else {
    j.s_enc = j.fmt.pre_scale;   // a fixed second-level scale (QuantFormat.pre_scale), 1 without one
  }
  s_enc_out = at::full({}, j.s_enc, x.options().dtype(at::kFloat));
  // multiply by the reciprocal: what 'reciprocal' division means, and exact for power-of-two scales
  j.inverse_multiply = j.fmt.division == kReciprocal || (j.fmt.scale_kind == kE8M0 && j.s_enc == 1.0f);
  j.scale_table = j.fmt.scale_kind == kFp32Scale ? nullptr : scale_table.data_ptr<float>();
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "lowprec panel kernels: x must be dense (a permuted view at most)");
  j.unit_stride = x.is_contiguous();
  for (int d = 0; d < 3; ++d) j.stride[d] = x.stride(d);
  if (x.scalar_type() == at::kFloat) {
    j.x32 = x.data_ptr<float>();
  } else {
    j.x16 = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  }
  return j;
}

void run(QuantJob& j, bool fake) {
  std::atomic<bool> unmarkable_nan{false};
  j.unmarkable_nan = &unmarkable_nan;
  at::parallel_for(0, j.g.items(), 1, [&](int64_t begin, int64_t end) {
    Scratch sc(j.g);
    for (int64_t it = begin; it < end; ++it) run_item(j, sc, it, fake);
  });
  TORCH_CHECK_VALUE(!unmarkable_nan.load(), "a block holds NaN or Inf, and this scale format has no NaN code to mark it");
}

}  // namespace

// -> (codes uint8 [stored rows, stored cols (/ 2 when packed)], scales [scale rows, scale cols]
//     (uint8 codes, fp32 for fp32 scales), s_enc fp32 [])
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_panels_cpu(
    const at::Tensor& x, const at::Tensor& scale_table, c10::IntArrayRef iparams, c10::ArrayRef<double> fparams,
    c10::IntArrayRef geometry, const c10::optional<at::Tensor>& amax, int64_t rounding, int64_t seed,
    int64_t offset, bool pack) {
  at::Tensor s_enc;
  QuantJob j = make_job(x, scale_table, iparams, fparams, geometry, amax, rounding, seed, offset, s_enc);
  const PanelGeometry& g = j.g;
  TORCH_CHECK(!pack || j.fmt.elem.ebits + j.fmt.elem.mbits + 1 <= 4, "lowprec: only 4-bit codes are packed");
  j.packed = pack;
  auto codes = large_empty({g.stored_rows(), pack ? g.stored_cols() / 2 : g.stored_cols()},
                         x.options().dtype(at::kByte));
  const bool fp32_scales = j.fmt.scale_kind == kFp32Scale;
  auto scales = at::empty({g.scale_rows(), g.scale_cols()}, x.options().dtype(fp32_scales ? at::kFloat : at::kByte));
  j.codes = codes.data_ptr<uint8_t>();
  if (fp32_scales) j.scale_fp32 = scales.data_ptr<float>(); else j.scale_codes = scales.data_ptr<uint8_t>();
  run(j, false);
  return {codes, scales, s_enc};
}

// -> (x_hat fp32 [Bt, M, N], s_eff and amax per element fp32 [Bt, M, N] (empty unless
//     with_scales), s_enc fp32 [])
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fake_quantize_panels_cpu(
    const at::Tensor& x, const at::Tensor& scale_table, c10::IntArrayRef iparams, c10::ArrayRef<double> fparams,
    c10::IntArrayRef geometry, const c10::optional<at::Tensor>& amax, int64_t rounding, int64_t seed,
    int64_t offset, bool with_scales) {
  at::Tensor s_enc;
  QuantJob j = make_job(x, scale_table, iparams, fparams, geometry, amax, rounding, seed, offset, s_enc);
  const auto f32 = x.options().dtype(at::kFloat);
  auto x_hat = large_empty(x.sizes(), f32);
  auto s_eff = with_scales ? large_empty(x.sizes(), f32) : at::empty({0}, f32);
  auto amax_out = with_scales ? large_empty(x.sizes(), f32) : at::empty({0}, f32);
  j.x_hat = x_hat.data_ptr<float>();
  if (with_scales) {
    j.s_eff_out = s_eff.data_ptr<float>();
    j.amax_out = amax_out.data_ptr<float>();
  }
  run(j, true);
  return {x_hat, s_eff, amax_out, s_enc};
}

}  // namespace lowprec
