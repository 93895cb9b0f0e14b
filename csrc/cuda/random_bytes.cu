// CUDA kernel: the Philox byte stream (same header as the CPU kernel). Torch-free, so that
// CI can compile it with plain nvcc for sm_80 and sm_90a.
#include <cuda_runtime.h>
#include <stdint.h>

#include "lowprec/philox.h"

namespace lowprec {

__global__ void random_bytes_kernel(uint8_t* out, uint64_t seed, uint64_t offset, int64_t numel) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t base = c * 16;
  if (base >= numel) return;
  const Uint4x32 r = randint4x(seed, offset + static_cast<uint64_t>(c));
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    if (base + j < numel) out[base + j] = static_cast<uint8_t>(r.w[j / 4] >> (8 * (j % 4)));
  }
}

cudaError_t launch_random_bytes(uint8_t* out, uint64_t seed, uint64_t offset, int64_t numel,
                                cudaStream_t stream) {
  const int64_t n_counters = (numel + 15) / 16;
  if (n_counters == 0) return cudaSuccess;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((n_counters + threads - 1) / threads);
  random_bytes_kernel<<<blocks, threads, 0, stream>>>(out, seed, offset, numel);
  return cudaGetLastError();
}

}  // namespace lowprec
