// CUDA bindings (built only with LOWPREC_BUILD_CUDA): wraps the torch-free launchers and
// registers them as the CUDA implementations of the lowprec ops declared in ops.cpp.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include "cpu/aten.h"

#include "lowprec/formats.h"
#include "lowprec/params.h"

namespace lowprec {
cudaError_t launch_random_bytes(uint8_t* out, uint64_t seed, uint64_t offset, int64_t numel, cudaStream_t stream);
cudaError_t launch_block_quantize(const float* x, const uint8_t* rand, const float* table, const BlockFormat& fmt,
                                  float s_enc, int rounding, uint64_t seed, uint64_t offset, int inline_rng,
                                  int64_t n_blocks, int bs, int write_codes, uint8_t* codes, uint8_t* scales8,
                                  float* scales32, float* xhat, float* amax, float* seff, cudaStream_t stream);
cudaError_t launch_block_dequantize(const uint8_t* codes, const float* seff, const float* table, int64_t n, int bs,
                                    float* out, cudaStream_t stream);

at::Tensor random_bytes_cuda(int64_t seed, int64_t offset, int64_t numel, c10::Device device) {
  TORCH_CHECK(numel >= 0, "lowprec::random_bytes: numel must be >= 0");
  c10::cuda::CUDAGuard guard(device);
  auto out = at::empty({numel}, at::TensorOptions().dtype(at::kByte).device(device));
  auto err = launch_random_bytes(out.data_ptr<uint8_t>(), static_cast<uint64_t>(seed),
                                 static_cast<uint64_t>(offset), numel, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "lowprec::random_bytes: ", cudaGetErrorString(err));
  return out;
}

namespace {
std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const at::Tensor& xb, const c10::optional<at::Tensor>& rand,
                                                   const at::Tensor& table, c10::IntArrayRef ip, c10::ArrayRef<double> fp,
                                                   double s_enc, int64_t rounding, int64_t seed, int64_t offset,
                                                   bool inline_rng, bool write_codes) {
  TORCH_CHECK(xb.is_cuda() && xb.scalar_type() == at::kFloat && xb.dim() == 2 && xb.is_contiguous(),
              "lowprec cuda kernels take contiguous fp32 blocks [n_blocks, block]");
  c10::cuda::CUDAGuard guard(xb.device());
  const BlockFormat f = block_format_from(ip, fp);
  const int64_t n = xb.size(0);
  const int bs = static_cast<int>(xb.size(1));
  const bool has_rand = rand.has_value() && rand->defined() && rand->numel() > 0;
  TORCH_CHECK(rounding != kStochastic || inline_rng || has_rand, "lowprec: stochastic rounding needs random bytes");
  auto opts = xb.options();
  at::Tensor codes, scales, xhat, amax;
  auto seff = at::empty({n}, opts);
  auto tab = table.to(xb.device()).contiguous();
  if (write_codes) {
    codes = at::empty(xb.sizes(), opts.dtype(at::kByte));
    scales = at::empty({n}, opts.dtype(f.scale_kind == kFp32Scale ? at::kFloat : at::kByte));
  } else {
    xhat = at::empty_like(xb);
    amax = at::empty({n}, opts);
  }
  auto err = launch_block_quantize(
      xb.data_ptr<float>(), has_rand ? rand->data_ptr<uint8_t>() : nullptr, tab.data_ptr<float>(), f,
      static_cast<float>(s_enc), static_cast<int>(rounding), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
      inline_rng ? 1 : 0, n, bs, write_codes ? 1 : 0,
      write_codes ? codes.data_ptr<uint8_t>() : nullptr,
      write_codes && f.scale_kind != kFp32Scale ? scales.data_ptr<uint8_t>() : nullptr,
      write_codes && f.scale_kind == kFp32Scale ? scales.data_ptr<float>() : nullptr,
      write_codes ? nullptr : xhat.data_ptr<float>(), write_codes ? nullptr : amax.data_ptr<float>(),
      seff.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "lowprec block quantize: ", cudaGetErrorString(err));
  if (write_codes) return {codes, scales, seff};
  return {xhat, seff, amax};
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_blocks_cuda(
    const at::Tensor& xb, const c10::optional<at::Tensor>& rand, const at::Tensor& table, c10::IntArrayRef ip,
    c10::ArrayRef<double> fp, double s_enc, int64_t rounding, int64_t seed, int64_t offset, bool inline_rng) {
  return run(xb, rand, table, ip, fp, s_enc, rounding, seed, offset, inline_rng, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_blocks_cuda(
    const at::Tensor& xb, const c10::optional<at::Tensor>& rand, const at::Tensor& table, c10::IntArrayRef ip,
    c10::ArrayRef<double> fp, double s_enc, int64_t rounding, int64_t seed, int64_t offset, bool inline_rng) {
  return run(xb, rand, table, ip, fp, s_enc, rounding, seed, offset, inline_rng, false);
}

at::Tensor dequantize_blocks_cuda(const at::Tensor& codes, const at::Tensor& s_eff, const at::Tensor& table) {
  TORCH_CHECK(codes.is_cuda() && codes.scalar_type() == at::kByte && codes.dim() == 2 && codes.is_contiguous(),
              "lowprec::dequantize_blocks: codes uint8 [n, bs] on CUDA");
  c10::cuda::CUDAGuard guard(codes.device());
  auto out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  auto s = s_eff.contiguous();
  auto tab = table.to(codes.device()).contiguous();
  auto err = launch_block_dequantize(codes.data_ptr<uint8_t>(), s.data_ptr<float>(), tab.data_ptr<float>(),
                                     codes.numel(), static_cast<int>(codes.size(1)), out.data_ptr<float>(),
                                     c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "lowprec::dequantize_blocks: ", cudaGetErrorString(err));
  return out;
}
}  // namespace lowprec

TORCH_LIBRARY_IMPL(lowprec, CUDA, m) {
  m.impl("quantize_blocks", &lowprec::quantize_blocks_cuda);
  m.impl("fake_quantize_blocks", &lowprec::fake_quantize_blocks_cuda);
  m.impl("dequantize_blocks", &lowprec::dequantize_blocks_cuda);
}
