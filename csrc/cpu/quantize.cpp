// C++ CPU kernels for block quantization (OpenMP over blocks). Inputs are fp32 blocks
// [n_blocks, block] made contiguous by the Python wrapper; the math is formats.h, the same
// code the CUDA kernels use, bit-exact with lowprec/reference.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cmath>

#include "lowprec/formats.h"
#include "lowprec/params.h"

namespace lowprec {

namespace {

struct Params {
  BlockFormat fmt;
  float s_enc;
  int rounding;
  uint64_t seed, offset;
  bool inline_rng;
};

Params make_params(c10::IntArrayRef ip, c10::ArrayRef<double> fp, double s_enc, int64_t rounding,
                   int64_t seed, int64_t offset, bool inline_rng) {
  Params p;
  p.fmt = block_format_from(ip, fp);
  p.s_enc = static_cast<float>(s_enc);
  p.rounding = int(rounding);
  p.seed = static_cast<uint64_t>(seed);
  p.offset = static_cast<uint64_t>(offset);
  p.inline_rng = inline_rng;
  return p;
}

// Effective scale of a block, and its stored code (or fp32 value).
inline float block_scale(float amax, const Params& p, const float* scale_table, uint32_t* code_out,
                         float* fp32_out) {
  float dec;
  if (p.fmt.scale_kind == kFp32Scale) {
    dec = (amax / p.fmt.elem.max) * p.s_enc;
    *fp32_out = dec;
  } else {
    const uint32_t c = scale_code(amax, p.fmt, p.s_enc);
    *code_out = c;
    dec = scale_table[c];
  }
  return dec / p.s_enc;
}

// Random bytes of one block: from the given tensor, or Philox at the flat indices
// blk*bs + j (one randint4x per 16 elements).
struct BlockRng {
  const uint8_t* given;
  const Params* p;
  int64_t base;
  void fill(uint8_t* out, int64_t n) const {
    if (given) {
      for (int64_t j = 0; j < n; ++j) out[j] = given[j];
      return;
    }
    int64_t j = 0;
    while (j < n) {
      const uint64_t i = static_cast<uint64_t>(base + j);
      const Uint4x32 r = randint4x(p->seed, p->offset + i / 16);
      for (int64_t k = static_cast<int64_t>(i % 16); k < 16 && j < n; ++k, ++j) {
        out[j] = static_cast<uint8_t>(r.w[k / 4] >> (8 * (k % 4)));
      }
    }
  }
};

constexpr int64_t kMaxBlock = 128 * 128;

// x_scaled = x / s (0 when s == 0), rounded on the element grid: the inner loop of every kernel.
inline void round_block(const float* xr, int64_t bs, float s, const Params& p, const BlockRng& rng, float* v) {
  if (p.rounding == kStochastic) {
    uint8_t bytes[kMaxBlock];
    rng.fill(bytes, bs);
    for (int64_t j = 0; j < bs; ++j) {
      const float xs = (s == 0.0f) ? 0.0f : xr[j] / s;
      v[j] = round_element(xs, p.fmt.elem, kStochastic, bytes[j]);
    }
  } else if (p.rounding == kNearest) {
    for (int64_t j = 0; j < bs; ++j) {
      const float xs = (s == 0.0f) ? 0.0f : xr[j] / s;
      v[j] = round_element(xs, p.fmt.elem, kNearest, 0u);
    }
  } else {
    for (int64_t j = 0; j < bs; ++j) {
      const float xs = (s == 0.0f) ? 0.0f : xr[j] / s;
      v[j] = round_element(xs, p.fmt.elem, kZero, 0u);
    }
  }
}

template <typename Emit>
void for_each_block(const at::Tensor& xb, const c10::optional<at::Tensor>& rand, const Params& p,
                    const at::Tensor& scale_table, Emit emit) {
  const int64_t nblk = xb.size(0), bs = xb.size(1);
  const float* x = xb.data_ptr<float>();
  const uint8_t* r = (rand.has_value() && rand->defined()) ? rand->data_ptr<uint8_t>() : nullptr;
  const float* table = p.fmt.scale_kind == kFp32Scale ? nullptr : scale_table.data_ptr<float>();
  at::parallel_for(0, nblk, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* xr = x + b * bs;
      const float amax = block_amax(xr, bs);
      uint32_t code = 0;
      float fp32 = 0.0f;
      const float s = block_scale(amax, p, table, &code, &fp32);
      BlockRng rng{r ? r + b * bs : nullptr, &p, b * bs};
      emit(b, bs, xr, amax, s, code, fp32, rng);
    }
  });
}

void check_blocks(const at::Tensor& xb, const c10::optional<at::Tensor>& rand, int64_t rounding, bool inline_rng) {
  TORCH_CHECK(xb.device().is_cpu() && xb.scalar_type() == at::kFloat && xb.dim() == 2 && xb.is_contiguous(),
              "lowprec cpu kernels take contiguous fp32 blocks [n_blocks, block]");
  if (rounding == kStochastic && !inline_rng) {
    TORCH_CHECK(rand.has_value() && rand->defined() && rand->sizes() == xb.sizes() &&
                    rand->scalar_type() == at::kByte && rand->is_contiguous(),
                "lowprec: stochastic rounding needs random bytes shaped like the blocks, or inline_rng");
  }
}

}  // namespace

// -> (element codes uint8 [n, bs], scale codes uint8 [n] (fp32 for fp32 scales), s_eff fp32 [n])
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_blocks_cpu(
    const at::Tensor& xb, const c10::optional<at::Tensor>& rand, const at::Tensor& scale_table,
    c10::IntArrayRef iparams, c10::ArrayRef<double> fparams, double s_enc, int64_t rounding, int64_t seed,
    int64_t offset, bool inline_rng) {
  check_blocks(xb, rand, rounding, inline_rng);
  const Params p = make_params(iparams, fparams, s_enc, rounding, seed, offset, inline_rng);
  const int64_t nblk = xb.size(0);
  auto codes = at::empty(xb.sizes(), xb.options().dtype(at::kByte));
  auto scales = at::empty({nblk}, xb.options().dtype(p.fmt.scale_kind == kFp32Scale ? at::kFloat : at::kByte));
  auto s_eff = at::empty({nblk}, xb.options());
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* sp = s_eff.data_ptr<float>();
  const bool fp32_scales = p.fmt.scale_kind == kFp32Scale;
  uint8_t* sc8 = fp32_scales ? nullptr : scales.data_ptr<uint8_t>();
  float* sc32 = fp32_scales ? scales.data_ptr<float>() : nullptr;
  for_each_block(xb, rand, p, scale_table, [&](int64_t b, int64_t bs, const float* xr, float, float s,
                                               uint32_t code, float fp32, const BlockRng& rng) {
    if (fp32_scales) sc32[b] = fp32; else sc8[b] = static_cast<uint8_t>(code);
    sp[b] = s;
    uint8_t* out = cp + b * bs;
    float v[kMaxBlock];
    round_block(xr, bs, s, p, rng, v);
    for (int64_t j = 0; j < bs; ++j) out[j] = static_cast<uint8_t>(element_code(v[j], p.fmt.elem));
  });
  return {codes, scales, s_eff};
}

// -> (x_hat fp32 [n, bs], s_eff fp32 [n], amax fp32 [n])
std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_blocks_cpu(
    const at::Tensor& xb, const c10::optional<at::Tensor>& rand, const at::Tensor& scale_table,
    c10::IntArrayRef iparams, c10::ArrayRef<double> fparams, double s_enc, int64_t rounding, int64_t seed,
    int64_t offset, bool inline_rng) {
  check_blocks(xb, rand, rounding, inline_rng);
  const Params p = make_params(iparams, fparams, s_enc, rounding, seed, offset, inline_rng);
  const int64_t nblk = xb.size(0);
  auto xhat = at::empty_like(xb);
  auto s_eff = at::empty({nblk}, xb.options());
  auto amax_out = at::empty({nblk}, xb.options());
  float* hp = xhat.data_ptr<float>();
  float* sp = s_eff.data_ptr<float>();
  float* ap = amax_out.data_ptr<float>();
  for_each_block(xb, rand, p, scale_table, [&](int64_t b, int64_t bs, const float* xr, float amax, float s,
                                               uint32_t, float, const BlockRng& rng) {
    sp[b] = s;
    ap[b] = amax;
    float* out = hp + b * bs;
    round_block(xr, bs, s, p, rng, out);
    for (int64_t j = 0; j < bs; ++j) out[j] *= s;
  });
  return {xhat, s_eff, amax_out};
}

// x_hat[b, j] = elem_table[codes[b, j]] * s_eff[b]
at::Tensor dequantize_blocks_cpu(const at::Tensor& codes, const at::Tensor& s_eff, const at::Tensor& elem_table) {
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == 2 && codes.is_contiguous() &&
                  s_eff.scalar_type() == at::kFloat && s_eff.numel() == codes.size(0) &&
                  elem_table.scalar_type() == at::kFloat,
              "lowprec::dequantize_blocks: codes uint8 [n, bs], s_eff fp32 [n], table fp32");
  const int64_t nblk = codes.size(0), bs = codes.size(1);
  auto out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const float* s = s_eff.data_ptr<float>();
  const float* t = elem_table.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, nblk, 256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float sb = s[b];
      for (int64_t j = 0; j < bs; ++j) o[b * bs + j] = t[c[b * bs + j]] * sb;
    }
  });
  return out;
}

}  // namespace lowprec
