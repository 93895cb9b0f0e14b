// Block Walsh-Hadamard transform on the CPU, in the reference's exact operation order
// (stages h = 1, 2, 4, ...: (a, b) -> (a + b, a - b); then * fp32(1/sqrt(n)); signs after the
// transform forward, before it inverse), so results are bit-identical to lowprec/reference.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cmath>
#include <vector>

namespace lowprec {

at::Tensor hadamard_rows_cpu(const at::Tensor& x, int64_t n, const c10::optional<at::Tensor>& signs, bool inverse) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              "lowprec::hadamard_rows: contiguous fp32 [chunks, n] on the CPU");
  TORCH_CHECK(n >= 1 && (n & (n - 1)) == 0 && x.size(1) == n, "lowprec::hadamard_rows: n must be a power of two = x.size(1)");
  const bool has_signs = signs.has_value() && signs->defined();
  if (has_signs) {
    TORCH_CHECK(signs->scalar_type() == at::kFloat && signs->numel() == n && signs->is_contiguous(),
                "lowprec::hadamard_rows: signs fp32 [n]");
  }
  auto out = x.clone();
  float* o = out.data_ptr<float>();
  const float* s = has_signs ? signs->data_ptr<float>() : nullptr;
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  const int64_t rows = x.size(0);
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* v = o + r * n;
      if (s && inverse) for (int64_t j = 0; j < n; ++j) v[j] *= s[j];
      for (int64_t h = 1; h < n; h *= 2) {
        for (int64_t i = 0; i < n; i += 2 * h) {
          float* a = v + i;
          float* b = v + i + h;
          for (int64_t j = 0; j < h; ++j) {
            const float p = a[j], q = b[j];
            a[j] = p + q;
            b[j] = p - q;
          }
        }
      }
      for (int64_t j = 0; j < n; ++j) v[j] *= norm;
      if (s && !inverse) for (int64_t j = 0; j < n; ++j) v[j] *= s[j];
    }
  });
  return out;
}

}  // namespace lowprec
