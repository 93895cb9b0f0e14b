"""Registers the C++ CPU kernels of lowprec._C (importing fails with the reason if it is not built)."""

from typing import Optional

import torch

from .. import ops
from ..reference.blocking import make_layout, to_blocks
from ..tensor import QuantizedTensor, unpack_nibbles
from .blocked import ROUNDING_IDS, Prepared, format_params, int64_bits, scale_table

try:
    from .. import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
except ImportError as e:
    raise ImportError(f"lowprec._C is not built ({e}); build it with "
                      "`pip install -e . --no-build-isolation`") from e

from . import fakes  # noqa: E402,F401  (fake implementations for torch.compile / opcheck)


def _require_cpu(t: torch.Tensor) -> None:
    if t.device.type != "cpu":
        raise ops.BackendUnavailable(f"backend 'cpp' runs on the CPU, not {t.device}")


@ops.register("random_bytes", "cpp")
def random_bytes(seed: int, offset: int, numel: int, device=None) -> torch.Tensor:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":
        raise ops.BackendUnavailable(f"backend 'cpp' runs on the CPU, not {device}")
    return torch.ops.lowprec.random_bytes(int64_bits(seed), int64_bits(offset), int(numel), device)


def _prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor) -> Prepared:
    _require_cpu(x)
    return Prepared(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor,
                    lambda s, o, n, d: random_bytes(s, o, n, d))


def _kernel_args(p: Prepared):
    ints, floats = format_params(p.fmt)
    return (p.blocks, p.rand, scale_table(p.fmt, p.x.device), ints, floats, float(p.s_enc),
            ROUNDING_IDS[p.rounding], int64_bits(p.seed), int64_bits(p.offset), p.inline_rng)


@ops.register("quantize", "cpp")
def quantize(x, fmt="mxfp4", rounding="nearest", seed=None, offset=0, strict=False, nan_policy="propagate",
             amax_tensor: Optional[torch.Tensor] = None) -> QuantizedTensor:
    p = _prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor)
    codes, scales, _ = torch.ops.lowprec.quantize_blocks(*_kernel_args(p))
    return p.quantized_tensor(codes, scales)


@ops.register("fake_quantize", "cpp")
def fake_quantize_with_scales(x, fmt, rounding="nearest", seed=None, offset=0, nan_policy="propagate",
                              amax_tensor: Optional[torch.Tensor] = None):
    p = _prepare(x, fmt, rounding, seed, offset, False, nan_policy, amax_tensor)
    xhat, s_eff, amax = torch.ops.lowprec.fake_quantize_blocks(*_kernel_args(p))
    return p.to_x_shape(xhat), p.per_block(s_eff), p.per_block(amax)


@ops.register("dequantize", "cpp")
def dequantize(q: QuantizedTensor, dtype=None) -> torch.Tensor:
    _require_cpu(q.codes)
    layout = make_layout(q.shape, q.fmt)
    codes = unpack_nibbles(q.codes) if q.packed else q.codes
    bs = q.fmt.block_size ** (2 if q.fmt.block_2d else 1)
    blocks = to_blocks(codes, layout)
    grid = blocks.shape[:-1]
    s_eff = q.scales.to(torch.float32) if q.fmt.scale.kind == "fp32" else q.fmt.scale.table()[q.scales.long()]
    if q.tensor_scale is not None:
        s_eff = s_eff / q.tensor_scale
    out = torch.ops.lowprec.dequantize_blocks(blocks.reshape(-1, bs).contiguous(), s_eff.reshape(-1).contiguous(),
                                              q.fmt.element.table())
    from ..reference.blocking import from_blocks, from_stored
    return from_stored(from_blocks(out.reshape(*grid, bs), layout), layout).to(dtype or q.dtype)
