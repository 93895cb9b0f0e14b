"""FP4 GEMM in Triton: C = A_hat @ B_hat^T from packed E2M1 codes and block scales.

A is (M, K) and B is (N, K), both quantized with 1D blocks along K (the reduction axis).
Each K-tile is decoded in registers: element value (E2M1, from its 4 bits) times its block
scale; such a product has at most 6 significant bits and an fp32 exponent, so it is exact
in bf16 and tl.dot's products are exact (docs/numerics.md, "Quantized GEMM"); partial sums
accumulate in fp32. The tensor scales divide the accumulator once, in the epilogue.
"""

import triton
import triton.language as tl


@triton.jit
def _e2m1_value(c):
    """Value of 4-bit E2M1 codes (int32): sign bit 3, exponent bits 1-2, mantissa bit 0."""
    mag = c & 7
    e = mag >> 1
    m = (mag & 1).to(tl.float32)
    sub = m * 0.5
    normal = (1.0 + m * 0.5) * ((1 << tl.maximum(e - 1, 0)).to(tl.float32))
    v = tl.where(e == 0, sub, normal)
    return tl.where((c & 8) != 0, -v, v)


@triton.jit
def _load_tile(codes_ptr, scales_ptr, table_ptr, rows, k0, n_rows, K, stride_c, stride_s,
               BR: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, DOT_BF16: tl.constexpr):
    """Decoded [BR, BK] tile of rows ``rows`` and columns k0 .. k0 + BK (bf16 for tensor
    cores; fp32 under the interpreter, whose bf16 emulation cannot feed tl.dot)."""
    half = tl.arange(0, BK // 2)
    row_ok = rows < n_rows
    packed = tl.load(codes_ptr + rows[:, None] * stride_c + (k0 // 2 + half)[None, :],
                     mask=row_ok[:, None] & ((k0 // 2 + half) < K // 2)[None, :], other=0).to(tl.int32)
    lo = _e2m1_value(packed & 0xF)
    hi = _e2m1_value(packed >> 4)
    vals = tl.reshape(tl.join(lo, hi), (BR, BK))                      # even index in the low nibble
    nb = tl.arange(0, BK // BS)
    sc = tl.load(scales_ptr + rows[:, None] * stride_s + (k0 // BS + nb)[None, :],
                 mask=row_ok[:, None] & ((k0 // BS + nb) < K // BS)[None, :], other=0).to(tl.int32)
    dec = tl.load(table_ptr + sc)
    vals = tl.reshape(tl.reshape(vals, (BR, BK // BS, BS)) * dec[:, :, None], (BR, BK))
    if DOT_BF16:
        tile = vals.to(tl.bfloat16)
    else:
        tile = vals
    return tile


@triton.jit
def fp4_gemm_kernel(a_codes, a_scales, b_codes, b_scales, table_a, table_b, c_ptr, M, N, K, inv_tensor_scale,
                    stride_ac, stride_as, stride_bc, stride_bs, stride_cm,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr,
                    GROUP_M: tl.constexpr, DOT_BF16: tl.constexpr):
    """One BM x BN tile of C per program. Programs run in groups of GROUP_M tile rows, column
    by column, so the A and B tiles a group reads stay in L2 (1-D grid)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = _load_tile(a_codes, a_scales, table_a, rm, k0, M, K, stride_ac, stride_as, BM, BK, BS, DOT_BF16)
        b = _load_tile(b_codes, b_scales, table_b, rn, k0, N, K, stride_bc, stride_bs, BN, BK, BS, DOT_BF16)
        acc += tl.dot(a, tl.trans(b), out_dtype=tl.float32)
    acc = acc * inv_tensor_scale
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc, mask=(rm < M)[:, None] & (rn < N)[None, :])


# Tile shapes tried by the autotuner on a GPU: (BM, BN, BK, warps, pipeline stages). Decoding
# in registers is register-hungry: compiled for sm_90 (Triton 3.9, no GPU needed), these four
# use 166-227 registers a thread and spill nothing, while 128x128x128, 128x256x64,
# 256x128x64 and the 4-warp 128-wide tiles hit the 255 cap and spill 40-1350 bytes of stack.
GPU_TILES = ((128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 32, 8, 4), (64, 64, 64, 4, 3))
_TUNED = {}


def tuned_kernel(block_size: int):
    """fp4_gemm_kernel autotuned (per M, N, K) over GPU_TILES, each K tile widened to at least
    one scale block (block sizes are powers of two here, so a K tile holds whole blocks)."""
    if block_size not in _TUNED:
        shapes = dict.fromkeys((bm, bn, max(bk, block_size), w, st) for bm, bn, bk, w, st in GPU_TILES)
        configs = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=st)
                   for bm, bn, bk, w, st in shapes]
        _TUNED[block_size] = triton.autotune(configs=configs, key=["M", "N", "K"])(fp4_gemm_kernel)
    return _TUNED[block_size]
