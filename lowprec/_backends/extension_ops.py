"""Python wrappers of the lowprec._C block ops, shared by the 'cpp' (CPU tensors) and
'cuda' (CUDA tensors) backends: the kernels differ, the glue is the same."""

from typing import Optional

import torch

from .. import ops
from ..tensor import QuantizedTensor
from .blocked import ROUNDING_IDS, Prepared, dequantize_with, format_params, int64_bits, scale_table

FOUR_OVER_SIX_MAX_BLOCK = 256      # csrc/cuda/quantize.cu, kFourOverSixMaxBlock


def register_random_bytes(backend: str, device_type: str):
    """lowprec._C's Philox byte stream as ``backend``'s random_bytes op (returned too)."""
    def random_bytes(seed: int, offset: int, numel: int, device=None) -> torch.Tensor:
        device = torch.device(device) if device is not None else torch.device(device_type)
        if device.type != device_type:
            raise ops.BackendUnavailable(f"backend {backend!r} runs on {device_type}, not {device}")
        return torch.ops.lowprec.random_bytes(int64_bits(seed), int64_bits(offset), int(numel), device)

    ops.register("random_bytes", backend)(random_bytes)
    return random_bytes


def register_block_ops(backend: str, device_type: str) -> None:
    """random_bytes, and quantize / fake_quantize / dequantize through the [n_blocks, block]
    kernels of lowprec._C."""
    def require(t: torch.Tensor) -> None:
        if t.device.type != device_type:
            raise ops.BackendUnavailable(f"backend {backend!r} runs on {device_type} tensors, not {t.device}")

    random_bytes = register_random_bytes(backend, device_type)

    def prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor, sr_clipping) -> Prepared:
        require(x)
        return Prepared(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor,
                        lambda s, o, n, d: random_bytes(s, o, n, d), sr_clipping=sr_clipping)

    def kernel_args(p: Prepared):
        needs_work = p.fmt.four_over_six != "off" or p.fmt.scale_statistic != "amax"
        if needs_work and p.blocks.shape[-1] > FOUR_OVER_SIX_MAX_BLOCK:
            what = "Four Over Six" if p.fmt.four_over_six != "off" else "Gaussian-statistic"
            raise ValueError(f"the {backend} kernels take {what} blocks of at most {FOUR_OVER_SIX_MAX_BLOCK} "
                             f"elements, got {p.blocks.shape[-1]} (2-D tiles of {p.fmt.block_size})")
        ints, floats = format_params(p.fmt)
        return (p.blocks, p.rand, scale_table(p.fmt, p.x.device), ints, floats, float(p.s_enc),
                ROUNDING_IDS[p.rounding], int64_bits(p.seed), int64_bits(p.offset), p.inline_rng)

    def quantize(x, fmt="mxfp4", rounding="nearest", seed=None, offset=0, strict=False, nan_policy="propagate",
                 amax_tensor: Optional[torch.Tensor] = None, sr_clipping: bool = False) -> QuantizedTensor:
        p = prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor, sr_clipping)
        codes, scales, _ = torch.ops.lowprec.quantize_blocks(*kernel_args(p))
        return p.quantized_tensor(codes, scales)

    def fake_quantize_with_scales(x, fmt, rounding="nearest", seed=None, offset=0, nan_policy="propagate",
                                  amax_tensor: Optional[torch.Tensor] = None, with_scales: bool = True,
                                  sr_clipping: bool = False):
        p = prepare(x, fmt, rounding, seed, offset, False, nan_policy, amax_tensor, sr_clipping)
        xhat, s_eff, amax = torch.ops.lowprec.fake_quantize_blocks(*kernel_args(p))
        if not with_scales:
            return p.to_x_shape(xhat), None, None
        return p.to_x_shape(xhat), p.per_block(s_eff), p.per_block(amax)

    def dequantize(q: QuantizedTensor, dtype=None) -> torch.Tensor:
        require(q.codes)
        return dequantize_with(q, torch.ops.lowprec.dequantize_blocks, dtype)

    ops.register("quantize", backend)(quantize)
    ops.register("fake_quantize", backend)(fake_quantize_with_scales)
    ops.register("dequantize", backend)(dequantize)
