"""Python wrappers of the lowprec._C block ops, shared by the 'cpp' (CPU tensors) and
'cuda' (CUDA tensors) backends: the kernels differ, the glue is the same."""

from typing import Optional

import torch

from .. import ops
from ..reference.blocking import from_blocks, from_stored, make_layout, to_blocks
from ..tensor import QuantizedTensor, unpack_nibbles
from .blocked import ROUNDING_IDS, Prepared, format_params, int64_bits, scale_table


def register_block_ops(backend: str, device_type: str) -> None:
    def require(t: torch.Tensor) -> None:
        if t.device.type != device_type:
            raise ops.BackendUnavailable(f"backend {backend!r} runs on {device_type} tensors, not {t.device}")

    def random_bytes(seed: int, offset: int, numel: int, device=None) -> torch.Tensor:
        device = torch.device(device) if device is not None else torch.device(device_type)
        if device.type != device_type:
            raise ops.BackendUnavailable(f"backend {backend!r} runs on {device_type}, not {device}")
        return torch.ops.lowprec.random_bytes(int64_bits(seed), int64_bits(offset), int(numel), device)

    def prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor) -> Prepared:
        require(x)
        return Prepared(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor,
                        lambda s, o, n, d: random_bytes(s, o, n, d))

    def kernel_args(p: Prepared):
        ints, floats = format_params(p.fmt)
        return (p.blocks, p.rand, scale_table(p.fmt, p.x.device), ints, floats, float(p.s_enc),
                ROUNDING_IDS[p.rounding], int64_bits(p.seed), int64_bits(p.offset), p.inline_rng)

    def quantize(x, fmt="mxfp4", rounding="nearest", seed=None, offset=0, strict=False, nan_policy="propagate",
                 amax_tensor: Optional[torch.Tensor] = None) -> QuantizedTensor:
        p = prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor)
        codes, scales, _ = torch.ops.lowprec.quantize_blocks(*kernel_args(p))
        return p.quantized_tensor(codes, scales)

    def fake_quantize_with_scales(x, fmt, rounding="nearest", seed=None, offset=0, nan_policy="propagate",
                                  amax_tensor: Optional[torch.Tensor] = None):
        p = prepare(x, fmt, rounding, seed, offset, False, nan_policy, amax_tensor)
        xhat, s_eff, amax = torch.ops.lowprec.fake_quantize_blocks(*kernel_args(p))
        return p.to_x_shape(xhat), p.per_block(s_eff), p.per_block(amax)

    def dequantize(q: QuantizedTensor, dtype=None) -> torch.Tensor:
        require(q.codes)
        layout = make_layout(q.shape, q.fmt)
        codes = unpack_nibbles(q.codes) if q.packed else q.codes
        bs = q.fmt.block_size ** (2 if q.fmt.block_2d else 1)
        blocks = to_blocks(codes, layout)
        grid = blocks.shape[:-1]
        s_eff = q.scales.to(torch.float32) if q.fmt.scale.kind == "fp32" else q.fmt.scale.table(q.device)[q.scales.long()]
        if q.tensor_scale is not None:
            s_eff = s_eff / q.tensor_scale
        out = torch.ops.lowprec.dequantize_blocks(blocks.reshape(-1, bs).contiguous(),
                                                  s_eff.reshape(-1).contiguous(), q.fmt.element.table(q.device))
        return from_stored(from_blocks(out.reshape(*grid, bs), layout), layout).to(dtype or q.dtype)

    ops.register("random_bytes", backend)(random_bytes)
    ops.register("quantize", backend)(quantize)
    ops.register("fake_quantize", backend)(fake_quantize_with_scales)
    ops.register("dequantize", backend)(dequantize)
