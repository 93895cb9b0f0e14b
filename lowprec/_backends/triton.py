"""Registers the Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1)."""

import math
import os
from typing import Optional

import torch

from .. import ops
from ..tensor import QuantizedTensor
from ..blocking import from_stored, make_layout
from .blocked import (DIVISION_IDS, ROUNDING_IDS, check_quantize_call, SCALE_KIND_IDS, WIDENED_IN_KERNEL, Prepared, dequantize_with, format_params,
                      scale_table)

try:
    import triton
except ImportError as e:
    raise ImportError(f"triton is not installed ({e})") from e

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    raise ImportError("Triton kernels need a CUDA GPU; set TRITON_INTERPRET=1 to run them on the CPU (slow, for tests)")

from ..triton.quantize import _block_kernel, _dequant_kernel  # noqa: E402

# 16 elements a thread at 4 warps: compiled for sm_80 and sm_90, every quantize specialization
# of the tests then stays under 180 registers with no spills; at 4096 some hit 255 and spilled.
ELEMENTS_PER_PROGRAM = 2048


def rows_per_program(bs_p2: int) -> int:
    """Blocks per program: about ELEMENTS_PER_PROGRAM elements, 16 to 256 blocks."""
    return max(16, min(256, ELEMENTS_PER_PROGRAM // bs_p2))


def _random_bytes(seed, offset, numel, device):
    """Bytes for the non-inline case (permuted layouts): the fastest Philox for the device."""
    return ops.resolve("random_bytes", "auto", device)(seed, offset, numel, device=device)


def _run(p: Prepared, write_codes: bool, write_xhat: bool, ms_eden: bool = False):
    """One kernel pass; 4-bit codes of 1D blocks come back packed (``p.packs_in_kernel``)."""
    xb = p.blocks
    n, bs = xb.shape
    ints, floats = format_params(p.fmt)
    dev = xb.device
    pack = write_codes and p.packs_in_kernel()
    codes = torch.empty(n, bs // 2 if pack else bs, dtype=torch.uint8, device=dev) if write_codes \
        else xb.new_empty(0, dtype=torch.uint8)
    scales = torch.empty(n, dtype=torch.float32 if ints[5] == 2 else torch.uint8, device=dev) if write_codes \
        else xb.new_empty(0, dtype=torch.uint8)
    xhat = torch.empty(xb.shape, dtype=torch.float32, device=dev) if write_xhat else xb.new_empty(0, dtype=torch.float32)
    amax = torch.empty(n, dtype=torch.float32, device=dev) if write_xhat else xb.new_empty(0, dtype=torch.float32)
    s_eff = torch.empty(n, dtype=torch.float32, device=dev) if write_xhat else xb.new_empty(0, dtype=torch.float32)
    rand = p.rand if p.rand is not None else xb.new_empty(0, dtype=torch.uint8)
    bs_p2 = triton.next_power_of_2(bs)
    rows = rows_per_program(bs_p2)
    _block_kernel[(triton.cdiv(n, rows),)](
        xb, rand, scale_table(p.fmt, dev), codes, scales, xhat, s_eff, amax,
        n, float(p.s_enc), p.seed, p.offset,
        BS=bs, BS_P2=bs_p2, ROWS=rows,
        E_EBITS=ints[0], E_MBITS=ints[1], E_BIAS=ints[2], E_MAX=floats[0], E_NAN=max(ints[3], 0), E_EMAX=ints[4],
        S_KIND=ints[5], S_EBITS=ints[6], S_MBITS=ints[7], S_BIAS=ints[8], S_MAX=floats[1], S_NAN=max(ints[9], 0),
        RULE=ints[10], S_ROUND=ints[11], TENSOR_SCALE=ints[12], ROUNDING=ROUNDING_IDS[p.rounding],
        INLINE_RNG=p.inline_rng, WRITE_CODES=write_codes, WRITE_XHAT=write_xhat, PACK=pack, DIVISION=ints[13],
        FOUR_OVER_SIX=ints[14], STATISTIC=ints[15], KAPPA=floats[2], MS_EDEN=ms_eden,
        enable_fp_fusion=False)                 # a*b + c must round twice, as in the reference
    return codes, scales, xhat, s_eff, amax


def _prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor, sr_clipping) -> Prepared:
    if rounding == "ms_eden":
        # MS-EDEN in the kernel: the elements round to nearest under the tensor scale of twice
        # the amax, then the kernel corrects each block's scale (triton/quantize.py, ms_eden_codes)
        from ..formats import get_format
        from ..reference import ms_eden
        check_quantize_call(x, fmt, "stochastic", seed, offset, nan_policy, False, amax_tensor)
        ms_eden.check_format(get_format(fmt))
        return Prepared(x, fmt, "nearest", seed, offset, strict, nan_policy,
                        ms_eden.headroom_amax(x, get_format(fmt), amax_tensor), _random_bytes, keep_dtype=True)
    return Prepared(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor, _random_bytes, keep_dtype=True,
                    sr_clipping=sr_clipping)


@ops.register("quantize", "triton")
@ops.native_ms_eden
def quantize(x, fmt="mxfp4", rounding="nearest", seed=None, offset=0, strict=False, nan_policy="propagate",
             amax_tensor: Optional[torch.Tensor] = None, sr_clipping: bool = False) -> QuantizedTensor:
    p = _prepare(x, fmt, rounding, seed, offset, strict, nan_policy, amax_tensor, sr_clipping)
    codes, scales, _, _, _ = _run(p, True, False, rounding == "ms_eden")
    return p.quantized_tensor(codes, scales, packed=p.packs_in_kernel())


@ops.register("fake_quantize", "triton")
@ops.native_ms_eden
def fake_quantize_with_scales(x, fmt, rounding="nearest", seed=None, offset=0, nan_policy="propagate",
                              amax_tensor: Optional[torch.Tensor] = None, with_scales: bool = True,
                              sr_clipping: bool = False):
    p = _prepare(x, fmt, rounding, seed, offset, False, nan_policy, amax_tensor, sr_clipping)
    _, _, xhat, s_eff, amax = _run(p, False, True, rounding == "ms_eden")
    if not with_scales:
        return p.to_x_shape(xhat), None, None
    return p.to_x_shape(xhat), p.per_block(s_eff), p.per_block(amax)


@ops.register("dequantize", "triton")
def dequantize(q: QuantizedTensor, dtype=None) -> torch.Tensor:
    """1D blocks: one kernel from the stored (packed) codes and scale codes to ``dtype``;
    2D blocks, whose codes are packed across block rows, go through ``dequantize_with``."""
    dtype = dtype or q.dtype
    if q.fmt.block_2d or dtype not in WIDENED_IN_KERNEL:
        def kernel(codes, s_eff, table):
            out = torch.empty(codes.shape, dtype=torch.float32, device=codes.device)
            _launch_dequant(codes, s_eff, table, table, out, False, 2, None, 0)
            return out
        return dequantize_with(q, kernel, dtype)
    layout = make_layout(q.shape, q.fmt)
    bs = q.fmt.block_size
    out = torch.empty(layout.stored, dtype=dtype, device=q.device)
    _launch_dequant(q.codes.reshape(-1, bs // 2 if q.packed else bs), q.scales.reshape(-1), scale_table(q.fmt, q.device),
                    q.fmt.element.table(q.device), out.view(-1, bs), q.packed, SCALE_KIND_IDS[q.fmt.scale.kind], q.tensor_scale,
                    DIVISION_IDS[q.fmt.division])
    return from_stored(out, layout)


def _launch_dequant(codes, scales, table_s, table_e, out, packed, s_kind, tensor_scale, division):
    n, bs = out.shape
    bs_p2 = triton.next_power_of_2(bs)
    rows = rows_per_program(bs_p2)
    _dequant_kernel[(triton.cdiv(n, rows),)](codes, scales.contiguous(), table_s, table_e, out, n,
                                             1.0 if tensor_scale is None else float(tensor_scale),
                                             BS=bs, BS_P2=bs_p2, ROWS=rows, PACKED=packed, S_KIND=s_kind,
                                             TENSOR_SCALE=tensor_scale is not None, OUT_BF16=out.dtype == torch.bfloat16, DIVISION=division,
                                             enable_fp_fusion=False)


from ..gemm import check_operands  # noqa: E402
from ..triton.gemm import fp4_gemm_kernel, tuned_kernel  # noqa: E402


@ops.register("qgemm", "triton")
def qgemm(a: QuantizedTensor, b: QuantizedTensor, tiles: Optional[tuple] = None) -> torch.Tensor:
    """FP4 GEMM from packed codes: needs E2M1 elements and the same block size on both
    operands; a ragged last K tile is masked. ``tiles`` = (BM, BN, BK) fixes the tile shape;
    by default a GPU autotunes it (GPU_TILES) and the interpreter uses (32, 32, 64)."""
    check_operands(a, b)
    if a.fmt.element.name != "e2m1" or b.fmt.element.name != "e2m1":
        raise ValueError("the Triton FP4 GEMM takes E2M1 operands")
    if a.fmt.block_size != b.fmt.block_size or a.fmt.scale.kind == "fp32" or b.fmt.scale.kind == "fp32":
        raise ValueError("the Triton FP4 GEMM needs the same block size on both operands and 8-bit scales")
    bs = a.fmt.block_size
    if bs & (bs - 1):
        raise ValueError(f"the Triton FP4 GEMM needs a power-of-two block size (its tiles split K into blocks), got {bs}")
    m, kp = a.shape[0], a.codes.shape[1] * 2        # K padded to the block size
    n = b.shape[0]
    c = torch.empty(m, n, dtype=torch.float32, device=a.device)
    inv = 1.0
    if a.tensor_scale is not None:
        inv /= float(a.tensor_scale)
    if b.tensor_scale is not None:
        inv /= float(b.tensor_scale)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    args = (a.codes, a.scales, b.codes, b.scales, a.fmt.scale.table(a.device), b.fmt.scale.table(b.device),
            c, m, n, kp, inv, a.codes.stride(0), a.scales.stride(0), b.codes.stride(0), b.scales.stride(0), c.stride(0))
    if tiles is None and not interpreted:
        def grid(meta):
            return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)
        tuned_kernel(bs)[grid](*args, BS=bs, DOT_BF16=True)
        return c
    bm, bn, bk = tiles or (32, 32, 64)
    bk = max(bk, bs)
    if bk % bs or bk & (bk - 1):
        raise ValueError(f"the K tile {bk} must be a power of two holding whole blocks of {bs}")
    fp4_gemm_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](*args, BM=bm, BN=bn, BK=bk, BS=bs, GROUP_M=8,
                                                                DOT_BF16=not interpreted)
    return c


from ..reference.checks import SUPPORTED_DTYPES, check_quantize_call, check_uint64  # noqa: E402
from ..reference.hadamard import random_signs, sylvester  # noqa: E402
from ..reference.scales import tensor_encode_scale  # noqa: E402
from ..triton.hadamard_quantize import hadamard_quantize_kernel  # noqa: E402


def hadamard_quantize(x: torch.Tensor, n: int, fmt="nvfp4", rounding: str = "nearest", seed: int = 0,
                      offset_row: int = 0, offset_col: int = 0, hadamard_seed=None, return_transformed: bool = False,
                      sr_clipping: bool = False):
    """One pass over X (R x C, both multiples of n): (Q(X M^T) with blocks along C,
    Q(M X) with blocks along R), M = H_n diag(s) (signs first, then mixing), s from ``hadamard_seed`` (all +1 if None).
    With ``return_transformed`` also the kernel's X M^T and M X (in X's precision, held in fp32)."""
    if n not in (16, 32, 64, 128):
        raise ValueError("hadamard_quantize needs n in (16, 32, 64, 128), 1D blocks dividing n, and 8-bit scales")
    return row_col_quantize(x, fmt, rounding, seed, offset_row, offset_col, (n, hadamard_seed), (n, hadamard_seed),
                            return_transformed=return_transformed, sr_clipping=sr_clipping)


FUSED_TILES = (16, 32, 64, 128)


def row_col_tile(fmt, row_hadamard: int, col_hadamard: int) -> int:
    """The square tile the fused row/column quantizer works on: the smallest that holds a
    whole block and a whole Hadamard chunk on each side (at least 16)."""
    return max(16, fmt.block_size, row_hadamard, col_hadamard)


def row_col_quantize(x: torch.Tensor, fmt, rounding: str = "nearest", seed: int = 0, offset_row: int = 0,
                     offset_col: int = 0, row_hadamard=(0, None), col_hadamard=(0, None), amax_reduce=None,
                     return_transformed: bool = False, sr_clipping: bool = False):
    """One read of X (R x C) for two quantized operands, bit for bit those of the reference:
    Q(hadamard(X, h_r, axis=-1, seed=s_r)) blocked along C, and Q(hadamard(X, h_c, axis=0,
    seed=s_c)) blocked along R (stored C x R); ``row_hadamard`` / ``col_hadamard`` are
    (size, seed or None), size 0 for no transform.  ``amax_reduce``: a function applied to the
    two tensor amaxes (a tensor of 2) before the tensor scales are encoded, e.g. a
    data-parallel max.  R and C must be multiples of ``row_col_tile``."""
    fmt = check_quantize_call(x, fmt, rounding, seed, offset_row, "propagate", sr_clipping)
    check_uint64("offset_col", offset_col)
    (h_r, seed_r), (h_c, seed_c) = row_hadamard, col_hadamard
    for h in (h_r, h_c):
        if h not in (0,) + FUSED_TILES:
            raise ValueError(f"row_col_quantize takes Hadamard sizes 0, 16, 32, 64 or 128, got {h}")
    if fmt.block_2d or fmt.scale.kind == "fp32" or fmt.block_size not in (8,) + FUSED_TILES:
        raise ValueError("row_col_quantize needs 1D blocks of 8-128 elements and 8-bit scales")
    n = row_col_tile(fmt, h_r, h_c)
    if n % fmt.block_size:
        raise ValueError(f"blocks of {fmt.block_size} do not divide the {n}-element tile")
    if x.dim() != 2 or x.shape[0] % n or x.shape[1] % n:
        raise ValueError(f"row_col_quantize takes a 2-D tensor whose dims are multiples of {n}, got {tuple(x.shape)}")
    if rounding not in ROUNDING_IDS:
        raise ValueError(f"unknown rounding {rounding!r}")
    xf = (x if x.dtype in WIDENED_IN_KERNEL else x.to(torch.float32)).contiguous()
    R, C = xf.shape
    dev = x.device

    def side(h, s):
        if not h:
            return torch.ones(1, device=dev), 1.0, 0
        signs = random_signs(s, h, device=dev) if s is not None else torch.ones(h, device=dev)
        norm = float(torch.tensor(1.0 / math.sqrt(h), dtype=torch.float32))   # the reference's fp32 factor
        return signs.to(torch.float32).contiguous(), norm, h.bit_length() - 1

    signs_r, norm_r, log_r = side(h_r, seed_r)
    signs_c, norm_c, log_c = side(h_c, seed_c)
    ints, floats = format_params(fmt)
    packed = fmt.element.bits == 4
    in_dtype = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[xf.dtype]
    consts = dict(N=n, H_ROW=h_r, LOG_H_ROW=log_r, H_COL=h_c, LOG_H_COL=log_c, IN_DTYPE=in_dtype,
                  E_EBITS=ints[0], E_MBITS=ints[1], E_BIAS=ints[2], E_MAX=floats[0], E_NAN=max(ints[3], 0),
                  E_EMAX=ints[4], S_KIND=ints[5], S_EBITS=ints[6], S_MBITS=ints[7], S_BIAS=ints[8], S_MAX=floats[1],
                  S_NAN=max(ints[9], 0), RULE=ints[10], S_ROUND=ints[11], TENSOR_SCALE=ints[12],
                  ROUNDING=ROUNDING_IDS[rounding], PACK=packed, DIVISION=ints[13], FOUR_OVER_SIX=ints[14],
                  STATISTIC=ints[15], KAPPA=floats[2])
    grid = (R // n, C // n)
    table = scale_table(fmt, dev)
    row_codes = torch.empty(R, C // 2 if packed else C, dtype=torch.uint8, device=dev)
    col_codes = torch.empty(C, R // 2 if packed else R, dtype=torch.uint8, device=dev)
    row_scales = torch.empty(R, C // fmt.block_size, dtype=torch.uint8, device=dev)
    col_scales = torch.empty(C, R // fmt.block_size, dtype=torch.uint8, device=dev)
    row_t = torch.empty(R, C, device=dev) if return_transformed else xf.new_empty(0, dtype=torch.float32)
    col_t = torch.empty(R, C, device=dev) if return_transformed else xf.new_empty(0, dtype=torch.float32)
    common = (row_codes, row_scales, col_codes, col_scales, row_t, col_t, R, C, norm_r, norm_c)
    s_row = s_col = torch.full((), fmt.pre_scale, dtype=torch.float32, device=dev)
    if fmt.tensor_scale:
        amax = torch.empty(2 * grid[0] * grid[1], dtype=torch.float32, device=dev)
        hadamard_quantize_kernel[grid](xf, signs_r, signs_c, table, amax, *common, 1.0, 1.0, seed, offset_row,
                                       offset_col, BS=fmt.block_size, PASS=0, WRITE_T=False, enable_fp_fusion=False,
                                       **consts)
        am = amax.reshape(-1, 2).amax(0)          # tile amaxes over finite values only
        if amax_reduce is not None:
            am = amax_reduce(am)
        s_row = tensor_encode_scale(am[0], fmt)
        s_col = tensor_encode_scale(am[1], fmt)
    hadamard_quantize_kernel[grid](xf, signs_r, signs_c, table, xf, *common, float(s_row), float(s_col), seed,
                                   offset_row, offset_col, BS=fmt.block_size, PASS=1, WRITE_T=return_transformed,
                                   enable_fp_fusion=False, **consts)
    q_row = QuantizedTensor(row_codes, row_scales,
                            s_row if fmt.encode_scaled else None, fmt.replace(axis=-1), x.shape, x.dtype, 1)
    q_col = QuantizedTensor(col_codes, col_scales,
                            s_col if fmt.encode_scaled else None, fmt.replace(axis=0), x.shape, x.dtype, 0)
    if return_transformed:
        return q_row, q_col, row_t, col_t
    return q_row, q_col


ops.register("hadamard_quantize", "triton")(hadamard_quantize)
ops.register("row_col_quantize", "triton")(row_col_quantize)


from ..triton.sparsity import _compress_24_kernel, _nm_mask_kernel  # noqa: E402

MASK_GROUPS = 64


@ops.register("nm_mask", "triton")
def nm_mask(scores, n=2, m=4):
    if scores.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"nm_mask takes float32, bfloat16 or float16 scores, got {scores.dtype}")
    if m & (m - 1) or m > 32:
        raise ops.BackendUnavailable(f"backend 'triton' nm_mask needs a power-of-two group size <= 32, got m={m}")
    s = scores.to(torch.float32).contiguous()   # bf16/fp16 widen exactly: the same order
    out = torch.empty(s.shape, dtype=torch.int8, device=s.device)
    bad = torch.zeros(1, dtype=torch.int32, device=s.device)
    groups = s.numel() // m
    _nm_mask_kernel[(triton.cdiv(groups, MASK_GROUPS),)](s, out, bad, groups, N=n, M=m, G=MASK_GROUPS)
    if int(bad.item()):
        raise ValueError("scores hold NaN: an N:M mask needs a total order")
    return out.bool()


@ops.register("compress_24", "triton")
def compress_24(w, mask):
    if w.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"compress_24 takes float32, bfloat16 or float16, got {w.dtype}")
    if mask.shape != w.shape or mask.dtype != torch.bool or w.dim() < 1 or w.shape[-1] % 8:
        raise ValueError("compress_24: w and a bool mask of one shape, last dim a multiple of 8")
    x, k = w.to(torch.float32).contiguous(), mask.contiguous().view(torch.int8)
    values = torch.empty(*w.shape[:-1], w.shape[-1] // 2, dtype=torch.float32, device=w.device)
    meta = torch.empty(*w.shape[:-1], w.shape[-1] // 8, dtype=torch.uint8, device=w.device)
    bad = torch.zeros(1, dtype=torch.int32, device=w.device)
    pairs = w.numel() // 8
    _compress_24_kernel[(triton.cdiv(pairs, MASK_GROUPS),)](x, k, values, meta, bad, pairs, P=MASK_GROUPS)
    if int(bad.item()):
        raise ValueError("mask is not exactly 2:4")
    return values.to(w.dtype), meta
