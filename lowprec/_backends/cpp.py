"""Registers the C++ CPU kernels of lowprec._C (importing fails with the reason if it is not built)."""

try:
    from .. import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
except ImportError as e:
    raise ImportError(f"lowprec._C is not built ({e}); build it with "
                      "`pip install -e . --no-build-isolation`") from e

from . import fakes  # noqa: E402,F401  (fake implementations for torch.compile / opcheck)
from . import panels  # noqa: E402
from .. import ops as _ops  # noqa: E402
from .extension_ops import register_random_bytes  # noqa: E402

register_random_bytes("cpp", "cpu")
_ops.register("quantize", "cpp")(panels.quantize)
_ops.register("fake_quantize", "cpp")(panels.fake_quantize)
_ops.register("dequantize", "cpp")(panels.dequantize)

def _cpp_blockwise(x, n, axis, signs, inverse):
    """The whole-tensor transform through the C++ kernel, along any axis with no permuting copy:
    x as [lead, length, trail] (chunks along the middle dim) or [1, lead, length] when the axis
    is last. fp64 input keeps its precision through the reference's torch ops."""
    if x.dtype == torch.float64:
        return apply_blockwise(x, n, axis, signs, inverse)
    axis = check_blockwise(x, n, axis)
    shape = x.shape
    lead, length, trail = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    view, mode = ((1, lead, length), 0) if trail == 1 else ((lead, length, trail), 1)
    s = None if signs is None else signs.to(device=x.device, dtype=torch.float32).contiguous()
    xk = x.to(torch.float32).contiguous().view(view)
    return torch.ops.lowprec.hadamard_panels(xk, n, s, inverse, mode).view(shape).to(x.dtype)


def hadamard(x, block_size, axis=-1, seed=None, signs=None, inverse=False):
    if x.device.type != "cpu":
        raise _ops.BackendUnavailable(f"backend 'cpp' runs on cpu tensors, not {x.device}")
    signs = resolve_signs(x, block_size, seed, signs)
    return BlockHadamard.apply(x, block_size, axis, signs, inverse, _cpp_blockwise)


import math  # noqa: E402

import torch  # noqa: E402

from ..reference.checks import SUPPORTED_DTYPES  # noqa: E402
from ..reference.hadamard import BlockHadamard, apply_blockwise, check_blockwise, resolve_signs  # noqa: E402

_ops.register("hadamard", "cpp")(hadamard)


def _cpu_fp32(t, what):
    """t as a contiguous fp32 CPU tensor: bf16/fp16 widen exactly (order and values kept), so
    backend='auto' never refuses what the reference accepts."""
    if t.device.type != "cpu":
        raise _ops.BackendUnavailable(f"backend 'cpp' {what} runs on CPU tensors, not {t.device}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what} takes float32, bfloat16 or float16, got {t.dtype}")
    return t.to(torch.float32).contiguous()


@_ops.register("nm_mask", "cpp")
def nm_mask(scores, n=2, m=4):
    return torch.ops.lowprec.nm_mask(_cpu_fp32(scores, "nm_mask"), n, m)


@_ops.register("compress_24", "cpp")
def compress_24(w, mask):
    values, meta = torch.ops.lowprec.compress_24(_cpu_fp32(w, "compress_24"), mask.contiguous())
    return values.to(w.dtype), meta
