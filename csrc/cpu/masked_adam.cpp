// Fused masked-Adam step (AdamS of CAST, AdamW with AST's annealed masked decay), in place,
// bit-exact with sparse/reference.py: fp32 element-wise ops in the reference's order, no
// contraction (built with -ffp-contract=off), scalars rounded to fp32 on the host.
#include "aten.h"

#include <cmath>
#include <initializer_list>

namespace lowprec {

// scalars: lr, beta1, beta2, eps, c_wd, c1, c2, c_a, c_l, ibc1, ibc2 (already fp32 values)
void masked_adam_step_cpu(at::Tensor& w, const at::Tensor& g, at::Tensor& m, at::Tensor& v,
                          const c10::optional<at::Tensor>& mask, int64_t mode, c10::ArrayRef<double> scalars) {
  TORCH_CHECK(scalars.size() == 11, "lowprec::masked_adam_step_: 11 scalars");
  TORCH_CHECK(mode == 0 || mode == 1, "lowprec::masked_adam_step_: mode 0 (AdamS) or 1 (AST)");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&w, &g, &m, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                    t->numel() == w.numel(),
                "lowprec::masked_adam_step_: contiguous fp32 CPU tensors of one size");
  }
  const bool* k = nullptr;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous() && mask->numel() == w.numel(),
                "lowprec::masked_adam_step_: a contiguous bool mask of the weight's size");
    k = mask->data_ptr<bool>();
  }
  const float lr = static_cast<float>(scalars[0]), b1 = static_cast<float>(scalars[1]),
              b2 = static_cast<float>(scalars[2]), eps = static_cast<float>(scalars[3]),
              c_wd = static_cast<float>(scalars[4]), c1 = static_cast<float>(scalars[5]),
              c2 = static_cast<float>(scalars[6]), c_a = static_cast<float>(scalars[7]),
              c_l = static_cast<float>(scalars[8]), ibc1 = static_cast<float>(scalars[9]),
              ibc2 = static_cast<float>(scalars[10]);
  float* pw = w.data_ptr<float>();
  const float* pg = g.data_ptr<float>();
  float* pm = m.data_ptr<float>();
  float* pv = v.data_ptr<float>();
  at::parallel_for(0, w.numel(), 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float wi = pw[i];
      const float w1 = wi * c_wd;
      const float mn = pm[i] * b1 + pg[i] * c1;
      float d = mn;
      float vs = pg[i];  // no mask: AdamW, v from the gradient
      if (k != nullptr) vs = mn;
      if (k != nullptr && !k[i]) {
        if (mode == 0) {
          const float sgn = wi > 0.f ? 1.f : (wi < 0.f ? -1.f : 0.f);
          d = mn * c_a + sgn * c_l;
        } else {
          d = mn + wi * c_l;
        }
        vs = d;
      }
      const float vn = pv[i] * b2 + (vs * vs) * c2;
      const float den = std::sqrt(vn * ibc2) + eps;
      pw[i] = w1 - ((d * ibc1) / den) * lr;
      pm[i] = mn;
      pv[i] = vn;
    }
  });
}

}  // namespace lowprec
