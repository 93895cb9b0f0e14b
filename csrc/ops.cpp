// torch.library declarations of every lowprec op, and the device dispatch of each.
#include <torch/extension.h>
#include <torch/library.h>

namespace lowprec {
at::Tensor random_bytes_cpu(int64_t seed, int64_t offset, int64_t numel);
#ifdef LOWPREC_WITH_CUDA
at::Tensor random_bytes_cuda(int64_t seed, int64_t offset, int64_t numel, c10::Device device);
#endif

// No tensor argument to dispatch on: the device argument picks the kernel.
at::Tensor random_bytes(int64_t seed, int64_t offset, int64_t numel, c10::Device device) {
  if (device.is_cpu()) return random_bytes_cpu(seed, offset, numel);
#ifdef LOWPREC_WITH_CUDA
  if (device.is_cuda()) return random_bytes_cuda(seed, offset, numel, device);
#endif
  TORCH_CHECK(false, "lowprec::random_bytes: this build of lowprec._C has no kernel for ", device,
              " (CUDA kernels are built with LOWPREC_BUILD_CUDA=1 and a CUDA torch)");
}
}  // namespace lowprec

TORCH_LIBRARY(lowprec, m) {
  m.def("random_bytes(int seed, int offset, int numel, Device device) -> Tensor", &lowprec::random_bytes);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef LOWPREC_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
