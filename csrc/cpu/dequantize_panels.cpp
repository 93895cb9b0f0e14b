// Fused CPU dequantizer: stored codes (packed 4-bit or bytes) and block scales straight to
// x_hat = element_table[code] * (scale_table[scale code] / tensor scale), in the stored
// orientation cropped to the real rows and columns: [Bt, M, N] for row blocks and tiles (the
// Python side maps column blocks onto row blocks of the transposed problem). Bit-exact with
// lowprec/reference (two fp32 roundings: the scale division, then one product).
#include "aten.h"

#include <vector>

#include "large_empty.h"
#include "lowprec/formats.h"
#include "panels.h"
#include "simd.h"

namespace lowprec {

namespace {

using namespace simd;

struct DequantJob {
  PanelGeometry g;
  const uint8_t* codes;
  bool packed;
  const uint8_t* scale_codes;
  const float* scale_fp32;
  const float* scale_table;
  float pair_table[256][2];   // byte -> (value of low nibble, value of high nibble)
  float elem_table[256];      // code -> value (NaN past the format's codes)
  bool has_tensor_scale;
  float tensor_scale;
  bool reciprocal;          // division: s_eff = decode * fp32(1 / tensor scale)
  float tensor_scale_inv;
  float* out;
};

LOWPREC_ISA_CLONES void dequantize_row(const DequantJob& j, int64_t row, std::vector<float>& s, std::vector<float>& v) {
  const PanelGeometry& g = j.g;
  const int64_t b = row / g.M, m = row % g.M;
  const int64_t srow = g.mode == kRows ? row : b * g.panels + m / g.bm;   // scale grid row
  const int64_t np = g.padded_N();
  for (int64_t q = 0; q < g.groups; ++q) {
    const int64_t si = srow * g.groups + q;
    float sv = j.scale_fp32 ? j.scale_fp32[si] : j.scale_table[j.scale_codes[si]];
    if (j.has_tensor_scale) sv = j.reciprocal ? sv * j.tensor_scale_inv : sv / j.tensor_scale;
    for (int64_t k = q * g.gw; k < (q + 1) * g.gw; ++k) s[k] = sv;
  }
  const int64_t stored_row = g.mode == kRows ? row : b * g.padded_M() + m;
  if (j.packed) {
    const uint8_t* c = j.codes + stored_row * (np / 2);
    for (int64_t k = 0; k < np / 2; ++k) memcpy(v.data() + 2 * k, j.pair_table[c[k]], 2 * sizeof(float));
  } else {
    const uint8_t* c = j.codes + stored_row * np;
    for (int64_t k = 0; k < np; ++k) v[k] = j.elem_table[c[k]];
  }
  float* o = j.out + row * g.N;
  int64_t k = 0;
  for (; k + W <= g.N; k += W) store(o + k, load(v.data() + k) * load(s.data() + k));
  for (; k < g.N; ++k) o[k] = v[k] * s[k];
}

}  // namespace

// codes [stored rows, stored cols (/ 2 when packed)], scales [scale rows, scale cols] (uint8
// codes or fp32), geometry [Bt, M, N, mode (rows or tiles), block] -> x_hat fp32 [Bt, M, N]
at::Tensor dequantize_panels_cpu(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& scale_table,
                                 const at::Tensor& elem_table, const c10::optional<at::Tensor>& tensor_scale,
                                 c10::IntArrayRef geometry, bool packed) {
  TORCH_CHECK((geometry.size() == 5 || (geometry.size() == 6 && (geometry[5] == kIeee || geometry[5] == kReciprocal))) &&
                  (geometry[3] == kRows || geometry[3] == kTiles) && geometry[4] >= 2 &&
                  geometry[4] <= 128 && geometry[4] % 2 == 0,
              "lowprec::dequantize_panels: geometry is [Bt, M, N, mode (0 rows or 2 tiles), even block <= 128, "
              "division (optional: 0 ieee, 1 reciprocal)]");
  DequantJob j{PanelGeometry(geometry[0], geometry[1], geometry[2], int(geometry[3]), int(geometry[4]))};
  const PanelGeometry& g = j.g;
  TORCH_CHECK(codes.device().is_cpu() && codes.scalar_type() == at::kByte && codes.is_contiguous() &&
                  codes.numel() == g.stored_rows() * (packed ? g.stored_cols() / 2 : g.stored_cols()),
              "lowprec::dequantize_panels: codes must be contiguous uint8 of the stored shape");
  TORCH_CHECK(scales.is_contiguous() && scales.numel() == g.scale_rows() * g.scale_cols() &&
                  (scales.scalar_type() == at::kByte || scales.scalar_type() == at::kFloat),
              "lowprec::dequantize_panels: scales must be contiguous uint8 codes or fp32 of the scale grid");
  TORCH_CHECK(elem_table.scalar_type() == at::kFloat && elem_table.is_contiguous() &&
                  (packed ? elem_table.numel() == 16 : (elem_table.numel() >= 1 && elem_table.numel() <= 256)) &&
                  scale_table.scalar_type() == at::kFloat &&
                  (scales.scalar_type() == at::kFloat || scale_table.numel() == 256),
              "lowprec::dequantize_panels: an fp32 table of 16 (packed) or at most 256 element codes, and of 256 "
              "scale codes");
  j.codes = codes.data_ptr<uint8_t>();
  j.packed = packed;
  if (scales.scalar_type() == at::kFloat) {
    j.scale_fp32 = scales.data_ptr<float>();
  } else {
    j.scale_codes = scales.data_ptr<uint8_t>();
    j.scale_table = scale_table.data_ptr<float>();
  }
  const float* et = elem_table.data_ptr<float>();
  for (int c = 0; c < 256; ++c) j.elem_table[c] = c < elem_table.numel() ? et[c] : NAN;
  if (packed) {
    for (int c = 0; c < 256; ++c) {
      j.pair_table[c][0] = j.elem_table[c & 15];
      j.pair_table[c][1] = j.elem_table[c >> 4];
    }
  }
  j.has_tensor_scale = tensor_scale.has_value() && tensor_scale->defined();
  if (j.has_tensor_scale) j.tensor_scale = tensor_scale->to(at::kFloat).item<float>();
  j.reciprocal = geometry.size() == 6 && geometry[5] == kReciprocal;
  j.tensor_scale_inv = j.has_tensor_scale ? 1.0f / j.tensor_scale : 1.0f;
  auto out = large_empty({g.Bt, g.M, g.N}, codes.options().dtype(at::kFloat));
  j.out = out.data_ptr<float>();
  at::parallel_for(0, g.Bt * g.M, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> s(g.padded_N() + W), v(g.padded_N() + W);
    for (int64_t r = begin; r < end; ++r) dequantize_row(j, r, s, v);
  });
  return out;
}

}  // namespace lowprec
