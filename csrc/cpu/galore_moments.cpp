// GaLore's Adam moments on the CPU, bit-exact with lowprec/galore/moments.py (the spec):
// fp32 element-wise arithmetic in the reference's order with no contraction (built with
// -ffp-contract=off), IEEE sqrt and division, host-rounded scalars.
//
// galore_adam_fp32_: M and V in fp32, updated in place; returns N.
// galore_adam_lowbit: M and S = sqrt(V) read from element codes (E2M1 packed two per byte,
//   even index in the low nibble, or one byte each) and block-scale codes (blocks of `block`
//   along the last dim, padded), decoded as table[code] * (scale_table[scode] / tensor_scale).
//   pass 0 returns the amax of M' and sqrt(V') (for the tensor scales); pass 1 returns
//   (N, M' codes, M' scale codes, S' codes, S' scale codes, [S_enc of M', of S']) with the
//   given tensor scales, M' and S' stochastically rounded with the Philox byte of element
//   (i, j) at flat index i * cols + j from (seed, offset); pass 2 does both in one call.
#include "aten.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <vector>

#include "lowprec/formats.h"
#include "lowprec/params.h"

namespace lowprec {

namespace {

struct AdamScalars {
  float b1, b2, c1, c2, ibc1, ibc2, eps;
};

AdamScalars adam_scalars(c10::ArrayRef<double> s) {
  TORCH_CHECK(s.size() == 7, "lowprec GaLore moments: 7 scalars (beta1, beta2, c1, c2, ibc1, ibc2, eps)");
  return {static_cast<float>(s[0]), static_cast<float>(s[1]), static_cast<float>(s[2]), static_cast<float>(s[3]),
          static_cast<float>(s[4]), static_cast<float>(s[5]), static_cast<float>(s[6])};
}

// m' = m b1 + r c1;  v' = v b2 + (r r) c2;  n = (m' ibc1) / (sqrt(v' ibc2) + eps)
inline float adam_element(float m, float v, float r, const AdamScalars& a, float* mn, float* vn) {
  *mn = m * a.b1 + r * a.c1;
  *vn = v * a.b2 + (r * r) * a.c2;
  return (*mn * a.ibc1) / (std::sqrt(*vn * a.ibc2) + a.eps);
}

// A moment stored as codes and block-scale codes.
struct StoredMoment {
  const uint8_t* codes;
  const uint8_t* scales;
  int64_t ldc, lds;
  float tensor_scale;
};

struct Layout {
  int64_t rows, cols, block, blocks_per_row;
  bool packed;
  const float* etab;
  const float* stab;
};

// Element codes of block (i, kb) decoded into out[0, block): table[code] * s_eff, with the
// block's s_eff = scale_table[scode] / tensor_scale computed once.
inline void decode_block(const StoredMoment& s, const Layout& l, int64_t i, int64_t kb, float* out) {
  const float s_eff = l.stab[s.scales[i * s.lds + kb]] / s.tensor_scale;
  const uint8_t* c = s.codes + i * s.ldc + (l.packed ? kb * (l.block / 2) : kb * l.block);
  if (l.packed) {
    for (int64_t h = 0; h < l.block / 2; ++h) {
      out[2 * h] = l.etab[c[h] & 0xFu] * s_eff;
      out[2 * h + 1] = l.etab[c[h] >> 4] * s_eff;
    }
  } else {
    for (int64_t t = 0; t < l.block; ++t) out[t] = l.etab[c[t]] * s_eff;
  }
}

// New M' and sqrt(V') of block (i, kb) into mv / sv (zeros past the last column); N written.
inline void block_update(const float* r, const StoredMoment& m, const StoredMoment& s, const Layout& l,
                         const AdamScalars& a, int64_t i, int64_t kb, float* mv, float* sv, float* n) {
  float md[128], sd[128];
  decode_block(m, l, i, kb, md);
  decode_block(s, l, i, kb, sd);
  const int64_t j0 = kb * l.block;
  const int64_t width = std::min<int64_t>(l.block, l.cols - j0);
  const float* rr = r + i * l.cols + j0;
  float* nn = n != nullptr ? n + i * l.cols + j0 : nullptr;
  for (int64_t t = 0; t < width; ++t) {
    float mn, vn;
    const float d = adam_element(md[t], sd[t] * sd[t], rr[t], a, &mn, &vn);
    if (nn != nullptr) nn[t] = d;
    mv[t] = mn;
    sv[t] = std::sqrt(vn);
  }
  for (int64_t t = width; t < l.block; ++t) mv[t] = sv[t] = 0.0f;
}

// Stochastic rounding of one block onto the element grid; writes codes and the scale code.
// Element (i, j) takes byte (i * cols + j) of the Philox stream (seed, offset).
inline void quantize_block(const float* x, const Layout& l, const BlockFormat& fmt, float s_enc, uint64_t seed,
                           uint64_t offset, int64_t i, int64_t kb, uint8_t* codes, int64_t ldc, uint8_t* scales,
                           int64_t lds) {
  const uint32_t sc = scale_code(block_amax(x, l.block), fmt, s_enc);
  const float s = l.stab[sc] / s_enc;
  scales[i * lds + kb] = static_cast<uint8_t>(sc);
  const int64_t j0 = kb * l.block;
  const int64_t width = std::min<int64_t>(l.block, l.cols - j0);
  uint8_t bytes[128];
  const uint64_t base = static_cast<uint64_t>(i * l.cols + j0);
  for (int64_t t = 0; t < width;) {
    const uint64_t idx = base + static_cast<uint64_t>(t);
    const Uint4x32 w = randint4x(seed, offset + (idx >> 4));
    for (uint32_t k = static_cast<uint32_t>(idx & 15u); k < 16 && t < width; ++k, ++t) {
      bytes[t] = static_cast<uint8_t>(w.w[k >> 2] >> (8 * (k & 3u)));
    }
  }
  for (int64_t t = width; t < l.block; ++t) bytes[t] = 0;
  uint32_t code[128];
  for (int64_t t = 0; t < l.block; ++t) {
    const float xs = (s == 0.0f) ? 0.0f : x[t] / s;
    code[t] = element_code(round_element(xs, fmt.elem, kStochastic, bytes[t]), fmt.elem);
  }
  uint8_t* out = codes + i * ldc + (l.packed ? j0 / 2 : j0);
  if (l.packed) {
    for (int64_t h = 0; h < l.block / 2; ++h) out[h] = static_cast<uint8_t>((code[2 * h] & 0xFu) | (code[2 * h + 1] << 4));
  } else {
    for (int64_t t = 0; t < l.block; ++t) out[t] = static_cast<uint8_t>(code[t]);
  }
}

BlockFormat block_format(c10::IntArrayRef ip, c10::ArrayRef<double> fp) {
  const BlockFormat f = block_format_from(ip, fp);
  TORCH_CHECK(f.scale_kind != kFp32Scale, "lowprec GaLore moments: low-bit state needs coded block scales");
  return f;
}

void check_codes(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kByte && t.dim() == 2 && t.is_contiguous(),
              "lowprec GaLore moments: ", what, " must be contiguous 2-D uint8 CPU tensors");
}

}  // namespace

at::Tensor galore_adam_fp32_cpu(const at::Tensor& r, at::Tensor& m, at::Tensor& v, c10::ArrayRef<double> scalars) {
  const AdamScalars a = adam_scalars(scalars);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&r, &m, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                    t->numel() == r.numel(),
                "lowprec::galore_adam_fp32_: contiguous fp32 CPU tensors of one size");
  }
  auto n = at::empty_like(r);
  const float* pr = r.data_ptr<float>();
  float* pm = m.data_ptr<float>();
  float* pv = v.data_ptr<float>();
  float* pn = n.data_ptr<float>();
  at::parallel_for(0, r.numel(), 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float mn, vn;
      pn[i] = adam_element(pm[i], pv[i], pr[i], a, &mn, &vn);
      pm[i] = mn;
      pv[i] = vn;
    }
  });
  return n;
}

std::vector<at::Tensor> galore_adam_lowbit_cpu(const at::Tensor& r, const at::Tensor& m_codes,
                                               const at::Tensor& m_scales, const at::Tensor& s_codes,
                                               const at::Tensor& s_scales, const at::Tensor& elem_table,
                                               const at::Tensor& scale_table, c10::IntArrayRef iparams,
                                               c10::ArrayRef<double> fparams, c10::ArrayRef<double> scalars,
                                               int64_t block, int64_t pass, double m_tensor_scale,
                                               double s_tensor_scale, double m_s_enc, double s_s_enc, int64_t seed,
                                               int64_t m_offset, int64_t s_offset) {
  const AdamScalars a = adam_scalars(scalars);
  const BlockFormat fmt = block_format(iparams, fparams);
  TORCH_CHECK(r.device().is_cpu() && r.scalar_type() == at::kFloat && r.dim() == 2 && r.is_contiguous(),
              "lowprec::galore_adam_lowbit: a contiguous 2-D fp32 CPU gradient");
  TORCH_CHECK(block >= 2 && block <= 128 && block % 2 == 0, "lowprec::galore_adam_lowbit: block in [2, 128], even");
  TORCH_CHECK(pass >= 0 && pass <= 2,
              "lowprec::galore_adam_lowbit: pass 0 (amaxes), 1 (update with the given tensor scales) or 2 (all)");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&m_codes, &m_scales, &s_codes, &s_scales})
    check_codes(*t, "codes and scale codes");
  TORCH_CHECK(elem_table.scalar_type() == at::kFloat && scale_table.scalar_type() == at::kFloat &&
                  elem_table.is_contiguous() && scale_table.is_contiguous(),
              "lowprec::galore_adam_lowbit: fp32 decode tables");
  const int64_t rows = r.size(0), cols = r.size(1);
  const int64_t bpr = (cols + block - 1) / block;
  const bool packed = fmt.elem.ebits + fmt.elem.mbits + 1 == 4;
  const int64_t ldc = packed ? bpr * block / 2 : bpr * block;
  TORCH_CHECK(m_codes.sizes() == s_codes.sizes() && m_codes.size(0) == rows && m_codes.size(1) == ldc &&
                  m_scales.sizes() == s_scales.sizes() && m_scales.size(0) == rows && m_scales.size(1) == bpr,
              "lowprec::galore_adam_lowbit: stored moments do not match the gradient's shape and block");
  const Layout l{rows, cols, block, bpr, packed, elem_table.data_ptr<float>(), scale_table.data_ptr<float>()};
  const StoredMoment m{m_codes.data_ptr<uint8_t>(), m_scales.data_ptr<uint8_t>(), ldc, bpr,
                       static_cast<float>(m_tensor_scale)};
  const StoredMoment s{s_codes.data_ptr<uint8_t>(), s_scales.data_ptr<uint8_t>(), ldc, bpr,
                       static_cast<float>(s_tensor_scale)};
  const float* pr = r.data_ptr<float>();
  const int64_t nblk = rows * bpr;

  if (pass == 0) {
    auto amax = at::empty({nblk, 2}, r.options());
    float* pa = amax.data_ptr<float>();
    at::parallel_for(0, nblk, 64, [&](int64_t begin, int64_t end) {
      float mv[128], sv[128];
      for (int64_t b = begin; b < end; ++b) {
        block_update(pr, m, s, l, a, b / bpr, b % bpr, mv, sv, nullptr);
        pa[2 * b] = block_amax(mv, block);
        pa[2 * b + 1] = block_amax(sv, block);
      }
    });
    return {std::get<0>(amax.max(0, false)).contiguous()};  // max along blocks; NaN propagates
  }

  auto n = at::empty_like(r);
  auto om_codes = at::empty_like(m_codes), os_codes = at::empty_like(s_codes);
  auto om_scales = at::empty_like(m_scales), os_scales = at::empty_like(s_scales);
  auto enc = at::empty({2}, r.options());
  float* pn = n.data_ptr<float>();
  uint8_t *pmc = om_codes.data_ptr<uint8_t>(), *psc = os_codes.data_ptr<uint8_t>();
  uint8_t *pms = om_scales.data_ptr<uint8_t>(), *pss = os_scales.data_ptr<uint8_t>();
  float m_enc = static_cast<float>(m_s_enc), s_enc = static_cast<float>(s_s_enc);
  const uint64_t sd = static_cast<uint64_t>(seed);
  const uint64_t mo = static_cast<uint64_t>(m_offset), so = static_cast<uint64_t>(s_offset);
  if (pass == 2 && fmt.tensor_scale) {
    // one call: M' and sqrt(V') of every block into a scratch buffer, their amaxes, the
    // tensor scales, then the quantization (no second decode as pass 0 + pass 1 would do)
    auto scratch = at::empty({2, nblk, block}, r.options());
    float* pm = scratch.data_ptr<float>();
    float* ps = pm + nblk * block;
    at::parallel_for(0, nblk, 64, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) block_update(pr, m, s, l, a, b / bpr, b % bpr, pm + b * block,
                                                         ps + b * block, pn);
    });
    m_enc = tensor_encode_scale(finite_amax(pm, nblk * block), fmt);
    s_enc = tensor_encode_scale(finite_amax(ps, nblk * block), fmt);
    at::parallel_for(0, nblk, 64, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        quantize_block(pm + b * block, l, fmt, m_enc, sd, mo, b / bpr, b % bpr, pmc, ldc, pms, bpr);
        quantize_block(ps + b * block, l, fmt, s_enc, sd, so, b / bpr, b % bpr, psc, ldc, pss, bpr);
      }
    });
  } else {
    if (pass == 2) m_enc = s_enc = 1.0f;
    at::parallel_for(0, nblk, 64, [&](int64_t begin, int64_t end) {
      float mv[128], sv[128];
      for (int64_t b = begin; b < end; ++b) {
        const int64_t i = b / bpr, kb = b % bpr;
        block_update(pr, m, s, l, a, i, kb, mv, sv, pn);
        quantize_block(mv, l, fmt, m_enc, sd, mo, i, kb, pmc, ldc, pms, bpr);
        quantize_block(sv, l, fmt, s_enc, sd, so, i, kb, psc, ldc, pss, bpr);
      }
    });
  }
  enc.data_ptr<float>()[0] = m_enc;
  enc.data_ptr<float>()[1] = s_enc;
  return {n, om_codes, om_scales, os_codes, os_scales, enc};
}

}  // namespace lowprec
