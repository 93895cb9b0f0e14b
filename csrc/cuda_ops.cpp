// CUDA bindings (built only with LOWPREC_BUILD_CUDA): wraps the torch-free launchers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

namespace lowprec {
cudaError_t launch_random_bytes(uint8_t* out, uint64_t seed, uint64_t offset, int64_t numel,
                                cudaStream_t stream);

at::Tensor random_bytes_cuda(int64_t seed, int64_t offset, int64_t numel, c10::Device device) {
  TORCH_CHECK(numel >= 0, "lowprec::random_bytes: numel must be >= 0");
  c10::cuda::CUDAGuard guard(device);
  auto out = at::empty({numel}, at::TensorOptions().dtype(at::kByte).device(device));
  auto err = launch_random_bytes(out.data_ptr<uint8_t>(), static_cast<uint64_t>(seed),
                                 static_cast<uint64_t>(offset), numel,
                                 at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "lowprec::random_bytes: ", cudaGetErrorString(err));
  return out;
}
}  // namespace lowprec
