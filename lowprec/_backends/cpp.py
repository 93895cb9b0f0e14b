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

def _cpp_chunks(chunks, n, signs, inverse):
    """fp32 chunks through the C++ kernel; other dtypes (fp64) through the reference's torch ops."""
    if chunks.dtype != torch.float32:
        return torch_chunks(chunks, n, signs, inverse)
    flat = chunks.reshape(-1, n).contiguous()
    return torch.ops.lowprec.hadamard_rows(flat, n, signs, inverse).reshape(chunks.shape)


def hadamard(x, block_size, axis=-1, seed=None, signs=None, inverse=False):
    if x.device.type != "cpu":
        raise _ops.BackendUnavailable(f"backend 'cpp' runs on cpu tensors, not {x.device}")
    signs = resolve_signs(x, block_size, seed, signs)
    return BlockHadamard.apply(x, block_size, axis, signs, inverse, _cpp_chunks)


import torch  # noqa: E402

from ..reference.hadamard import BlockHadamard, resolve_signs, torch_chunks  # noqa: E402

_ops.register("hadamard", "cpp")(hadamard)


def _cpu_fp32(t, what):
    if t.device.type != "cpu" or t.dtype != torch.float32:
        raise _ops.BackendUnavailable(f"backend 'cpp' {what} takes fp32 CPU tensors, got {t.dtype} on {t.device}")


@_ops.register("nm_mask", "cpp")
def nm_mask(scores, n=2, m=4):
    _cpu_fp32(scores, "nm_mask")
    return torch.ops.lowprec.nm_mask(scores.contiguous(), n, m)


@_ops.register("compress_24", "cpp")
def compress_24(w, mask):
    _cpu_fp32(w, "compress_24")
    return torch.ops.lowprec.compress_24(w.contiguous(), mask.contiguous())
