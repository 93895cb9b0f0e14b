// C++ CPU kernels for 2:4 masks and compressed storage, bit-exact with
// lowprec/reference/sparsity.py (ties in a group go to the lower index).
#include "aten.h"

#include <cmath>

namespace lowprec {

at::Tensor nm_mask_cpu(const at::Tensor& scores, int64_t n, int64_t m) {
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == at::kFloat && scores.is_contiguous(),
              "lowprec::nm_mask: contiguous fp32 scores on the CPU");
  TORCH_CHECK(n > 0 && n <= m && m <= 64, "lowprec::nm_mask: need 0 < n <= m <= 64");
  TORCH_CHECK(scores.dim() >= 1 && scores.size(-1) % m == 0, "lowprec::nm_mask: last dim must be a multiple of m");
  auto mask = at::zeros(scores.sizes(), scores.options().dtype(at::kBool));
  const float* s = scores.data_ptr<float>();
  bool* out = mask.data_ptr<bool>();
  const int64_t groups = scores.numel() / m;
  std::atomic<bool> has_nan{false};
  at::parallel_for(0, groups, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const float* v = s + g * m;
      for (int64_t i = 0; i < m; ++i) {
        if (std::isnan(v[i])) has_nan = true;
        // rank of i = how many elements beat it (larger, or equal with a lower index)
        int64_t rank = 0;
        for (int64_t j = 0; j < m; ++j) rank += (v[j] > v[i]) || (v[j] == v[i] && j < i);
        out[g * m + i] = rank < n;
      }
    }
  });
  TORCH_CHECK(!has_nan, "scores hold NaN: an N:M mask needs a total order");
  return mask;
}

std::tuple<at::Tensor, at::Tensor> compress_24_cpu(const at::Tensor& w, const at::Tensor& mask) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.is_contiguous() && mask.is_contiguous() &&
                  mask.scalar_type() == at::kBool && mask.sizes() == w.sizes() && w.dim() >= 1 && w.size(-1) % 8 == 0,
              "lowprec::compress_24: contiguous fp32 w and bool mask of one shape, last dim a multiple of 8");
  auto vshape = w.sizes().vec();
  vshape.back() /= 2;
  auto mshape = w.sizes().vec();
  mshape.back() /= 8;
  auto values = at::empty(vshape, w.options());
  auto meta = at::empty(mshape, w.options().dtype(at::kByte));
  const float* x = w.data_ptr<float>();
  const bool* k = mask.data_ptr<bool>();
  float* v = values.data_ptr<float>();
  uint8_t* md = meta.data_ptr<uint8_t>();
  const int64_t pairs = w.numel() / 8;   // two groups of 4 per metadata byte
  std::atomic<bool> bad{false};
  at::parallel_for(0, pairs, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      uint8_t byte = 0;
      for (int h = 0; h < 2; ++h) {
        const int64_t g = 2 * p + h;
        int kept = 0;
        uint8_t nib = 0;
        for (int i = 0; i < 4; ++i) {
          if (k[g * 4 + i]) {
            if (kept < 2) {
              v[g * 2 + kept] = x[g * 4 + i];
              nib |= static_cast<uint8_t>(i << (2 * kept));
            }
            ++kept;
          }
        }
        if (kept != 2) bad = true;
        byte |= static_cast<uint8_t>(nib << (4 * h));
      }
      md[p] = byte;
    }
  });
  TORCH_CHECK(!bad, "mask is not exactly 2:4");
  return {values, meta};
}

}  // namespace lowprec
