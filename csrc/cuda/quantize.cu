// CUDA block quantization kernels: one thread per block of the [n_blocks, bs] fp32 input,
// with the bit logic of formats.h (shared with the CPU kernels, bit-exact with the
// reference). Torch-free: compiled by plain nvcc in CI; cuda_ops.cpp binds the launchers.
#include <cuda_runtime.h>
#include <stdint.h>

#include "lowprec/formats.h"

namespace lowprec {

constexpr int kFourOverSixMaxBlock = 256;   // elements of a Four Over Six block here (16 x 16 tiles)

struct CudaParams {
  BlockFormat fmt;
  float s_enc;
  int rounding;
  uint64_t seed, offset;
  int inline_rng;
};

__device__ __forceinline__ float block_scale_dev(float amax, const CudaParams& p, const float* table,
                                                 uint32_t* code, float* fp32) {
  float dec;
  if (p.fmt.scale_kind == kFp32Scale) {
    dec = high_precision_scale(amax, p.fmt, p.s_enc);   // compiled with --fmad=false: no contraction
    *fp32 = dec;
  } else {
    *code = scale_code(amax, p.fmt, p.s_enc);
    dec = table[*code];
  }
  return effective_scale(dec, p.fmt, p.s_enc);
}

// mode 0: write codes + scales; mode 1: write x_hat + amax. s_eff always.
__global__ void block_quantize_kernel(const float* __restrict__ x, const uint8_t* __restrict__ rand,
                                      const float* __restrict__ table, CudaParams p, int64_t n_blocks, int bs,
                                      int write_codes, uint8_t* codes, uint8_t* scales8, float* scales32,
                                      float* xhat, float* amax_out, float* seff) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= n_blocks) return;
  const float* xr = x + b * bs;
  float amax = 0.0f;
  bool nan = false;
  for (int j = 0; j < bs; ++j) {
    const float a = fabsf(xr[j]);
    nan |= isnan(a);
    amax = a > amax ? a : amax;
  }
  if (nan) amax = __int_as_float(0x7fc00000);
  uint32_t code = 0;
  float fp32 = 0.0f;
  float stat = amax;
  if (p.fmt.scale_statistic == kStatGaussian) {
    float work[kFourOverSixMaxBlock];   // the glue refuses larger blocks (lowprec/_backends/extension_ops.py)
    stat = gaussian_statistic(xr, bs, amax, p.fmt.gaussian_kappa, work);
  }
  float s = block_scale_dev(stat, p, table, &code, &fp32);
  if (p.fmt.four_over_six != kFourOverSixOff) {
    float work[kFourOverSixMaxBlock];   // the glue refuses larger blocks (lowprec/_backends/cuda.py)
    four_over_six(xr, bs, amax, p.fmt, p.s_enc, table, &code, &s, work);
  }
  seff[b] = s;
  if (write_codes) {
    if (p.fmt.scale_kind == kFp32Scale) scales32[b] = fp32; else scales8[b] = static_cast<uint8_t>(code);
  } else {
    amax_out[b] = amax;
  }
  for (int j = 0; j < bs; ++j) {
    const int64_t i = b * bs + j;
    uint32_t r = 0;
    if (p.rounding == kStochastic) r = p.inline_rng ? random_byte(p.seed, p.offset, static_cast<uint64_t>(i)) : rand[i];
    const float xs = (s == 0.0f) ? 0.0f
                     : (p.fmt.division == kReciprocal ? xr[j] * element_multiplier(s) : __fdiv_rn(xr[j], s));
    const float v = round_element(xs, p.fmt.elem, p.rounding, r);
    if (write_codes) codes[i] = static_cast<uint8_t>(element_code(v, p.fmt.elem));
    else xhat[i] = v * s;
  }
}

__global__ void block_dequantize_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ seff,
                                        const float* __restrict__ table, int64_t n, int bs, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = table[codes[i]] * seff[i / bs];
}

cudaError_t launch_block_quantize(const float* x, const uint8_t* rand, const float* table, const BlockFormat& fmt,
                                  float s_enc, int rounding, uint64_t seed, uint64_t offset, int inline_rng,
                                  int64_t n_blocks, int bs, int write_codes, uint8_t* codes, uint8_t* scales8,
                                  float* scales32, float* xhat, float* amax, float* seff, cudaStream_t stream) {
  if (n_blocks == 0) return cudaSuccess;
  CudaParams p{fmt, s_enc, rounding, seed, offset, inline_rng};
  const int threads = 128;
  const unsigned grid = static_cast<unsigned>((n_blocks + threads - 1) / threads);
  block_quantize_kernel<<<grid, threads, 0, stream>>>(x, rand, table, p, n_blocks, bs, write_codes, codes, scales8,
                                                      scales32, xhat, amax, seff);
  return cudaGetLastError();
}

cudaError_t launch_block_dequantize(const uint8_t* codes, const float* seff, const float* table, int64_t n, int bs,
                                    float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  block_dequantize_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      codes, seff, table, n, bs, out);
  return cudaGetLastError();
}

}  // namespace lowprec
