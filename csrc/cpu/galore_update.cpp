// GaLore's projected update W <- c_wd * W - coef * (A @ B) on the CPU, one row tile at a
// time: each tile's product lives in a (tile x n) buffer, so the full m x n update is
// never materialized.
#include "aten.h"

namespace lowprec {

void galore_update_cpu(at::Tensor& w, const at::Tensor& a, const at::Tensor& b, double coef, double c_wd) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.is_contiguous() && w.dim() == 2,
              "lowprec::galore_update_: a contiguous 2-D fp32 CPU weight");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.dim() == 2 && b.dim() == 2 &&
                  a.size(0) == w.size(0) && b.size(1) == w.size(1) && a.size(1) == b.size(0),
              "lowprec::galore_update_: fp32 A (m x k) and B (k x n) for W (m x n)");
  const int64_t m = w.size(0), n = w.size(1);
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(m, (1 << 16) / std::max<int64_t>(n, 1)));
  const float cw = static_cast<float>(c_wd), cf = static_cast<float>(coef);
  auto ac = a.contiguous(), bc = b.contiguous();
  for (int64_t r0 = 0; r0 < m; r0 += tile) {
    const int64_t rows = std::min(tile, m - r0);
    at::Tensor prod = at::mm(ac.narrow(0, r0, rows), bc);  // rows x n buffer
    const float* pp = prod.data_ptr<float>();
    float* pw = w.data_ptr<float>() + r0 * n;
    at::parallel_for(0, rows * n, 8192, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) pw[i] = pw[i] * cw - cf * pp[i];
    });
  }
}

}  // namespace lowprec
