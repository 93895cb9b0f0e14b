"""Block-diagonal, optionally randomized, Hadamard transform (fast Walsh-Hadamard, O(n log n)).

H_n is the Sylvester matrix (H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]) divided by sqrt(n):
orthogonal and symmetric.  The transform of size n acts on each contiguous chunk v of n
elements along ``axis``:
    forward:  v -> M v = H_n (s * v),   M = H_n diag(s)   (flip signs first, then mix)
    inverse:  v -> M^T v = diag(s) H_n v                   (mix, then flip signs)
with s in {-1, +1}^n (all +1 when no seed is given).  For an operand whose chunks are rows
that is x -> x diag(s) H_n.  The order matters: block quantization is sign-symmetric
(Q(-y) = -Q(y), stochastic bits included), so signs applied after the mixing would change
no quantized value.  M^T M = I, so transforming both operands of a GEMM along its
reduction axis K leaves the product unchanged: (M a) . (M b) = a . b.  Signs from a seed: s_j = 1 - 2 * (byte_j & 1), byte_j = byte j of
the Philox stream (seed, offset 0) of docs/numerics.md.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch

from .checks import check_uint64, int64_bits
from .philox import random_bytes

MAX_HADAMARD = 1 << 15
_COMPUTE = {torch.float32: torch.float32, torch.float16: torch.float32,
            torch.bfloat16: torch.float32, torch.float64: torch.float64}


def check_size(n: int) -> None:
    if not isinstance(n, int) or n < 1 or n & (n - 1) or n > MAX_HADAMARD:
        raise ValueError(f"Hadamard size must be a power of two in [1, {MAX_HADAMARD}], got {n!r}")


def sylvester(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Dense normalized Sylvester matrix H_n (for tests and small dense uses)."""
    check_size(n)
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h / math.sqrt(n)


def random_signs(seed: int, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """s in {-1, +1}^n from the Philox stream of ``seed`` (cached: layers reuse their signs
    every step; the returned tensor must not be modified in place).

    Under torch.compile the signs come from the opaque op ``lowprec::hadamard_signs``: traced
    inline, the Philox rounds that make them would be compiled into every graph (inductor
    never finished compiling the nvfp4 recipe that way)."""
    device = torch.device(device or "cpu")
    if torch.compiler.is_compiling():
        return _signs_op(int64_bits(int(seed)), int(n), device).to(dtype)
    return _cached_signs(int(seed), int(n), str(device), dtype)


@torch.library.custom_op("lowprec::hadamard_signs", mutates_args=())
def _signs_op(seed_bits: int, n: int, device: torch.device) -> torch.Tensor:
    """float32 signs of the uint64 seed whose two's-complement int64 bits are ``seed_bits``
    (a fresh copy of the cached tensor: a compiled graph may reuse its outputs' memory)."""
    return _cached_signs(seed_bits & 0xFFFFFFFFFFFFFFFF, n, str(device), torch.float32).clone()


@_signs_op.register_fake
def _(seed_bits, n, device):
    return torch.empty(n, dtype=torch.float32, device=device)


@lru_cache(maxsize=4096)
def _cached_signs(seed: int, n: int, device: str, dtype) -> torch.Tensor:
    bits = (random_bytes(seed, 0, n, device=device) & 1).to(dtype)
    return 1.0 - 2.0 * bits


def fwht_last(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard transform along the last dim (length a power of two)."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


def torch_chunks(chunks: torch.Tensor, n: int, signs: Optional[torch.Tensor], inverse: bool) -> torch.Tensor:
    """The transform of every row of ``chunks`` [..., n] (already in the compute dtype)."""
    if signs is not None and not inverse:
        chunks = chunks * signs
    y = fwht_last(chunks) * (1.0 / math.sqrt(n))
    if signs is not None and inverse:
        y = y * signs
    return y


def check_blockwise(x: torch.Tensor, n: int, axis: int) -> int:
    """Validate a block transform of size n along ``axis``; returns the axis as a non-negative index."""
    if x.dtype not in _COMPUTE:
        raise TypeError(f"hadamard takes float32/float16/bfloat16/float64 input, got {x.dtype}")
    check_size(n)
    if x.dim() == 0:
        raise ValueError("hadamard needs a tensor with at least one dim")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__} {axis!r}")
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} is out of range for a {x.dim()}-d tensor")
    axis = axis % x.dim()
    if x.shape[axis] % n:
        raise ValueError(f"dim {axis} has {x.shape[axis]} elements, not a multiple of the Hadamard size {n}")
    return axis


def apply_blockwise(x: torch.Tensor, n: int, axis: int, signs: Optional[torch.Tensor], inverse: bool,
                    chunk_fn=torch_chunks) -> torch.Tensor:
    """Move ``axis`` last, cut it into chunks of n, transform them with ``chunk_fn``, put back."""
    axis = check_blockwise(x, n, axis)
    length = x.shape[axis]
    cdt = _COMPUTE[x.dtype]
    xm = x.movedim(axis, -1).to(cdt)
    chunks = xm.reshape(*xm.shape[:-1], length // n, n)
    s = None if signs is None else signs.to(device=x.device, dtype=cdt)
    y = chunk_fn(chunks, n, s, inverse)
    return y.reshape(xm.shape).movedim(-1, axis).to(x.dtype)


class BlockHadamard(torch.autograd.Function):
    """y = M x per chunk; dL/dx = M^T dL/dy (the inverse transform). ``blockwise(x, n, axis,
    signs, inverse)`` is the backend's whole-tensor transform (apply_blockwise for the reference)."""

    @staticmethod
    def forward(ctx, x, n, axis, signs, inverse, blockwise):
        ctx.args = (n, axis, signs, inverse, blockwise)
        return blockwise(x, n, axis, signs, inverse)

    @staticmethod
    def backward(ctx, grad):
        n, axis, signs, inverse, blockwise = ctx.args
        return blockwise(grad, n, axis, signs, not inverse), None, None, None, None, None


def resolve_signs(x: torch.Tensor, block_size: int, seed: Optional[int], signs: Optional[torch.Tensor]):
    if seed is not None and signs is not None:
        raise ValueError("give either seed or signs, not both")
    check_size(block_size)
    if seed is not None:
        signs = random_signs(check_uint64("seed", seed), block_size, device=x.device)
    elif signs is not None:
        if not isinstance(signs, torch.Tensor) or not signs.is_floating_point():
            raise TypeError(f"signs must be a floating-point tensor of +1/-1, got {signs!r}")
        if signs.shape != (block_size,):
            raise ValueError(f"signs must have shape ({block_size},), got {tuple(signs.shape)}")
        if not bool((signs.abs() == 1).all()):
            raise ValueError("signs must be +1 or -1 (a diagonal of signs keeps the transform orthogonal)")
    return signs


def hadamard_transform(x: torch.Tensor, block_size: int, axis: int = -1, seed: Optional[int] = None,
                       signs: Optional[torch.Tensor] = None, inverse: bool = False) -> torch.Tensor:
    """Block-diagonal (randomized when ``seed`` or ``signs`` is given) Hadamard transform."""
    signs = resolve_signs(x, block_size, seed, signs)
    return BlockHadamard.apply(x, block_size, axis, signs, inverse, apply_blockwise)
