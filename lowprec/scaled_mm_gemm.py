"""The FP4 GEMM on PyTorch's native block-scaled matmul (``torch.nn.functional.scaled_mm``),
for GPUs whose tensor cores read E2M1 with block scales (compute capability 10.0 and newer).

It computes the same product as ``qgemm``: C = dequantize(A) @ dequantize(B)^T in fp32, with
A (M, K) and B (N, K) blocked along K. The codes go in unchanged. Packed E2M1 codes are
``torch.float4_e2m1fn_x2`` (two per byte, the even index in the low nibble, as lowprec packs
them). E8M0 scale codes are ``torch.float8_e8m0fnu``, and UE4M3 scale codes are
``torch.float8_e4m3fn`` with the sign bit clear. The block scales are stored in the tiled
layout the tensor cores read ("32x4x4" swizzle, ``swizzle_scales``). The block-scale recipe
is ``BlockWise1x32`` for MX formats and ``BlockWise1x16`` for NVFP4. The tensor scales divide
the fp32 result once, as ``qgemm``'s epilogue does. UE5M3 scales have no torch dtype, so those
GEMMs stay on the Triton kernel.

The swizzled layout: the (rows, cols) scale matrix is zero-padded to multiples of (128, 4),
then cut into 128 x 4 tiles. The tiles are stored one after another, in row-major tile order,
512 bytes each. Inside a tile, the scale of row r and column c sits at byte
(r mod 32) * 16 + (r div 32) * 4 + c.

Nothing here has run on such a GPU yet: the projects' machines had none. So the first call per
device and format is checked against the Triton FP4 GEMM on a random problem. If it fails
(an error, or a difference beyond the GEMM bound), a warning says so and that format's GEMMs
stay on the Triton kernel. ``scaled_mm_blocker`` says why a GEMM cannot take this path.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .tensor import QuantizedTensor

TILE_ROWS, TILE_COLS = 128, 4
MIN_CAPABILITY = (10, 0)
_RECIPES = {("e8m0", 32): "BlockWise1x32", ("ue4m3", 16): "BlockWise1x16"}


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """(rows, cols) uint8 scale codes -> flat uint8 in the tiled layout (zero padding)."""
    rows, cols = scales.shape
    pr, pc = -(-rows // TILE_ROWS) * TILE_ROWS, -(-cols // TILE_COLS) * TILE_COLS
    padded = torch.zeros(pr, pc, dtype=scales.dtype, device=scales.device)
    padded[:rows, :cols] = scales
    # (tile row, 4 row groups of 32, 32 rows, tile col, 4 cols) -> (tile row, tile col, 32, 4, 4)
    t = padded.reshape(pr // TILE_ROWS, 4, 32, pc // TILE_COLS, TILE_COLS).permute(0, 3, 2, 1, 4)
    return t.contiguous().reshape(-1)


def unswizzle_scales(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The inverse of ``swizzle_scales``: the (rows, cols) scale codes."""
    pr, pc = -(-rows // TILE_ROWS) * TILE_ROWS, -(-cols // TILE_COLS) * TILE_COLS
    t = flat.reshape(pr // TILE_ROWS, pc // TILE_COLS, 32, 4, TILE_COLS).permute(0, 3, 2, 1, 4)
    return t.reshape(pr, pc)[:rows, :cols]


def _scale_name(q_fmt) -> str:
    s = q_fmt.scale
    return "e8m0" if s.kind == "e8m0" else f"ue{s.ebits}m{s.mbits}" if s.kind == "minifloat" else s.kind


def _torch_blocker() -> Optional[str]:
    import torch.nn.functional as F
    if not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType"):
        return f"torch {torch.__version__} has no torch.nn.functional.scaled_mm"
    if not all(hasattr(torch, d) for d in ("float4_e2m1fn_x2", "float8_e8m0fnu", "float8_e4m3fn")):
        return f"torch {torch.__version__} has no FP4/E8M0 dtypes"
    return None


def cuda_capability() -> Optional[tuple]:
    """The current CUDA device's compute capability, or None without CUDA."""
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def scaled_mm_blocker(fmt_a, fmt_b, capability: Optional[tuple]) -> Optional[str]:
    """Why torch's block-scaled FP4 matmul cannot compute a GEMM of operands in these formats
    (E2M1 elements, 1-D blocks along K) on a GPU of this capability, or None when it can."""
    if capability is None or tuple(capability) < MIN_CAPABILITY:
        return f"compute capability {capability} < {MIN_CAPABILITY} has no block-scaled FP4 tensor cores"
    why = _torch_blocker()
    if why:
        return why
    for f in (fmt_a, fmt_b):
        key = (_scale_name(f), f.block_size)
        if key not in _RECIPES:
            return f"{key[0]} scales on blocks of {key[1]} have no torch block-scaled recipe"
        if f.division != "ieee":
            return "reciprocal division's tensor-scale arithmetic is not torch's"
    if (_scale_name(fmt_a), fmt_a.block_size) != (_scale_name(fmt_b), fmt_b.block_size):
        return "the operands have different block-scale formats"
    return None


def scaled_mm_qgemm(a: QuantizedTensor, b: QuantizedTensor) -> torch.Tensor:
    """fp32 dequantize(A) @ dequantize(B)^T on torch's block-scaled FP4 matmul (A: (M, K),
    B: (N, K), both packed E2M1 with 1-D blocks along K)."""
    import torch.nn.functional as F
    key = (_scale_name(a.fmt), a.fmt.block_size)
    recipe = getattr(F.ScalingType, _RECIPES[key])
    scale_dtype = torch.float8_e8m0fnu if key[0] == "e8m0" else torch.float8_e4m3fn
    mat_a = a.codes.view(torch.float4_e2m1fn_x2)
    mat_b = b.codes.view(torch.float4_e2m1fn_x2).t()          # (K/2, N): column-major B, as cuBLAS reads it
    sa = swizzle_scales(a.scales).view(scale_dtype)
    sb = swizzle_scales(b.scales).view(scale_dtype)
    c = F.scaled_mm(mat_a, mat_b, sa, recipe, sb, recipe, swizzle_a=F.SwizzleType.SWIZZLE_32_4_4,
                    swizzle_b=F.SwizzleType.SWIZZLE_32_4_4, output_dtype=torch.float32)
    for q in (a, b):
        if q.tensor_scale is not None:
            c = c / q.tensor_scale.to(torch.float32)
    return c


_VERIFIED: dict = {}


def verified(fmt, device: torch.device) -> bool:
    """Whether ``scaled_mm_qgemm`` computes the Triton FP4 GEMM's product for this format on
    this device (checked once on a random 256 x 320 x 256 problem; warns when it does not)."""
    from .library import format_to_json
    key = (format_to_json(fmt.replace(axis=-1)), str(device))
    if key not in _VERIFIED:
        from .functional import quantize
        from .gemm import qgemm
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(256, 256, generator=g, device=device) * 3
        w = torch.randn(320, 256, generator=g, device=device)
        qa, qb = quantize(x, fmt, backend="triton"), quantize(w, fmt, backend="triton")
        try:
            got = scaled_mm_qgemm(qa, qb)
            want = qgemm(qa, qb, backend="triton")
            err = float((got - want).abs().max() / want.abs().max())
            ok = err <= 1e-5
            why = f"differs from the Triton FP4 GEMM by {err:.2e} of its largest value"
        except Exception as e:   # noqa: BLE001 - the reason goes into the warning
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok:
            warnings.warn(f"lowprec: torch's block-scaled FP4 matmul failed its first-use check on {device} "
                          f"({why}); these GEMMs run on the Triton FP4 kernel instead", stacklevel=2)
        _VERIFIED[key] = ok
    return _VERIFIED[key]


__all__ = ["swizzle_scales", "unswizzle_scales", "scaled_mm_blocker", "scaled_mm_qgemm", "verified"]
