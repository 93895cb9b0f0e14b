"""Public functional API: quantize, dequantize, fake_quantize, hadamard, each with an
explicit ``backend`` ("reference" | "cpp" | "triton" | "cuda" | "auto")."""

from __future__ import annotations

from typing import Optional

import torch

from . import ops
from ._backends import reference as _reference  # noqa: F401  (registers the reference ops)
from .formats import get_format
from .reference.checks import check_uint64
from .tensor import QuantizedTensor


def quantize(x: torch.Tensor, fmt="mxfp4", rounding: str = "nearest", seed: Optional[int] = None,
             offset: int = 0, strict: bool = False, nan_policy: str = "propagate",
             backend: str = "auto", sr_clipping: bool = False) -> QuantizedTensor:
    """Block-quantize ``x`` into ``fmt`` (a QuantFormat or a preset name).

    rounding: "nearest" (ties to even), "stochastic" (needs ``seed``; bits from Philox at
    ``offset``), "zero".  Stochastic rounding runs with the format's non-clipping block scale
    (``formats.nonclipping``: e8m0 rceil, minifloat scales rounded up), so it is unbiased at
    every block maximum; ``q.fmt`` is the format actually used.  ``sr_clipping=True`` keeps
    the format's own scale rule (biased toward zero where a block maximum saturates).
    Shapes not divisible by the block are zero-padded (cropped again by dequantize) unless
    ``strict=True``, which raises.  nan_policy "propagate" marks NaN/Inf blocks with the NaN
    scale code; "raise" refuses them.
    """
    fn = ops.resolve("quantize", backend, x.device)
    return fn(x, get_format(fmt), rounding=rounding, seed=seed, offset=offset, strict=strict, nan_policy=nan_policy,
              sr_clipping=sr_clipping)


def dequantize(q: QuantizedTensor, dtype: Optional[torch.dtype] = None, backend: str = "auto") -> torch.Tensor:
    """Values of ``q`` in ``dtype`` (default: the dtype it was quantized from); the same call
    as ``q.dequantize(dtype)``."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"dequantize takes a QuantizedTensor, got {type(q).__name__}")
    return q.dequantize(dtype, backend=backend)


class _FakeQuantizeSTE(torch.autograd.Function):
    """y = dequantize(quantize(x)); dy/dx = I (straight-through)."""

    @staticmethod
    def forward(ctx, x, kwargs):
        q = quantize(x, **kwargs)
        return dequantize(q, backend=kwargs["backend"])

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize(x: torch.Tensor, fmt="mxfp4", rounding: str = "nearest", seed: Optional[int] = None,
                  offset: int = 0, strict: bool = False, nan_policy: str = "propagate",
                  backend: str = "auto", sr_clipping: bool = False) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (same arguments as ``quantize``)."""
    kwargs = dict(fmt=get_format(fmt), rounding=rounding, seed=seed, offset=offset, strict=strict,
                  nan_policy=nan_policy, backend=backend, sr_clipping=sr_clipping)
    return _FakeQuantizeSTE.apply(x, kwargs)


def hadamard(x: torch.Tensor, block_size: int = 16, axis: int = -1, seed: Optional[int] = None,
             signs: Optional[torch.Tensor] = None, inverse: bool = False, backend: str = "auto") -> torch.Tensor:
    """Block-diagonal Hadamard transform along ``axis`` (randomized by ``seed``); autograd-aware.

    Each chunk v of ``block_size`` elements becomes H (s * v) (H normalized Sylvester, signs
    s flipped before the mixing); ``inverse=True`` applies diag(s) H, the exact inverse.
    """
    return ops.resolve("hadamard", backend, x.device)(x, block_size, axis=axis, seed=seed,
                                                      signs=signs, inverse=inverse)


def random_bytes(seed: int, offset: int, numel: int, device=None, backend: str = "auto") -> torch.Tensor:
    """The Philox byte stream: byte i is byte i % 16 of randint4x(seed, offset + i // 16), the
    counter wrapping modulo 2**64; seed and offset are ints in [0, 2**64)."""
    check_uint64("seed", seed)
    check_uint64("offset", offset)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be an int >= 0, got {numel!r}")
    return ops.resolve("random_bytes", backend, device)(seed, offset, numel, device=device)


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4, backend: str = "auto") -> torch.Tensor:
    """Keep the n largest scores of every m along the last dim (ties: lower index)."""
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(f"nm_mask takes floating-point scores, got {getattr(scores, 'dtype', type(scores).__name__)}")
    if scores.dim() < 1 or scores.shape[-1] % m:
        raise ValueError(f"cannot group a tensor of shape {tuple(scores.shape)} into groups of {m}: its last "
                         f"dim (in_features) must be a multiple of {m}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores hold NaN: an N:M mask needs a total order")
    return ops.resolve("nm_mask", backend, scores.device)(scores, n, m)


def compress_24(w: torch.Tensor, mask: torch.Tensor, backend: str = "auto"):
    """(kept values, 2-bit index metadata) of a 2:4-sparse tensor; see reference.sparsity."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"compress_24 takes a floating-point tensor, got {getattr(w, 'dtype', type(w).__name__)}")
    if not isinstance(mask, torch.Tensor) or mask.shape != w.shape or mask.dtype != torch.bool:
        raise ValueError("compress_24: w and a bool mask of one shape, last dim a multiple of 8")
    if w.dim() < 1 or w.shape[-1] % 8:
        raise ValueError(f"the last dim ({w.shape[-1] if w.dim() else 'none'}) must be a multiple of the group size 8")
    if mask.numel() and not bool((mask.reshape(-1, 4).sum(-1) == 2).all()):
        raise ValueError("mask is not exactly 2:4")
    return ops.resolve("compress_24", backend, w.device)(w, mask)
