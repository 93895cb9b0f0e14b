"""Fused block Hadamard + amax + quantize, row-wise and column-wise outputs in one pass.

Each program loads one n x n tile of X (R x C) once and forms both transforms with the
matrix M = H_n diag(s) (signs flipped first, then mixed; tensor cores on a GPU; fp32 "ieee" precision):
  row output  X_r = X M^T along C   (the fprop operand: blocks along C)
  col output  X_c = M X along R     (the wgrad operand: blocks along R, stored transposed)
then quantizes each with the shared ``quantize_rows`` (blocks of BS | n).  Pass 0 only
reduces the amax of both transforms over their finite values (for tensor scales); pass 1 quantizes.  Stochastic
bits follow each element's row-major index in the R x C tensor being quantized.  X may be
fp32, bf16 or fp16 (widened as it loads); with PACK, 4-bit codes are stored two per byte
(even index in the low nibble) along each output's block axis.
"""

import triton
import triton.language as tl

from .quantize import _grid_code, quantize_rows, store_codes


@triton.jit
def hadamard_quantize_kernel(x_ptr, m_ptr, scale_table_ptr, amax_ptr,
                             row_codes, row_scales, col_codes, col_scales, row_t_ptr, col_t_ptr,
                             R, C, s_enc_row, s_enc_col, seed, offset_row, offset_col,
                             N: tl.constexpr, BS: tl.constexpr, PASS: tl.constexpr, WRITE_T: tl.constexpr,
                             E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr, E_MAX: tl.constexpr,
                             E_NAN: tl.constexpr, E_EMAX: tl.constexpr,
                             S_KIND: tl.constexpr, S_EBITS: tl.constexpr, S_MBITS: tl.constexpr, S_BIAS: tl.constexpr,
                             S_MAX: tl.constexpr, S_NAN: tl.constexpr, RULE: tl.constexpr, S_ROUND: tl.constexpr,
                             TENSOR_SCALE: tl.constexpr, ROUNDING: tl.constexpr, PACK: tl.constexpr,
                             DIVISION: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    r = pid_r * N + tl.arange(0, N)
    c = pid_c * N + tl.arange(0, N)
    idx = r[:, None].to(tl.int64) * C + c[None, :]
    tile = tl.load(x_ptr + idx).to(tl.float32)
    k = tl.arange(0, N)
    m = tl.load(m_ptr + k[:, None] * N + k[None, :])
    row_t = tl.dot(tile, tl.trans(m), input_precision="ieee")          # X M^T
    col_t = tl.dot(m, tile, input_precision="ieee")                    # M X
    if PASS == 0:
        pid = pid_r * tl.num_programs(1) + pid_c
        # the tensor amax is over finite values (NaN compares false): a NaN/Inf marks its blocks only
        a_r = tl.abs(row_t)
        a_c = tl.abs(col_t)
        am_r = tl.max(tl.max(tl.where(a_r < float("inf"), a_r, 0.0), axis=1), axis=0)
        am_c = tl.max(tl.max(tl.where(a_c < float("inf"), a_c, 0.0), axis=1), axis=0)
        tl.store(amax_ptr + 2 * pid, am_r)
        tl.store(amax_ptr + 2 * pid + 1, am_c)
    else:
        if WRITE_T:
            tl.store(row_t_ptr + idx, row_t)
            tl.store(col_t_ptr + idx, col_t)
        NB: tl.constexpr = N * (N // BS)
        ones = tl.full((NB,), 1, tl.int1)
        whole = tl.full((NB, BS), 1, tl.int1)
        # row output: blocks are runs of BS along C
        xr = tl.reshape(row_t, (NB, BS))
        ir = tl.reshape(idx, (NB, BS))
        v, code, dec, s, amax, sb = quantize_rows(
            xr, ones, ones[:, None], ir, x_ptr, scale_table_ptr, s_enc_row, seed, offset_row,
            E_EBITS, E_MBITS, E_BIAS, E_MAX, E_EMAX, S_KIND, S_EBITS, S_MBITS, S_BIAS, S_MAX, S_NAN, RULE,
            S_ROUND, TENSOR_SCALE, ROUNDING, True, DIVISION)
        store_codes(row_codes, ir, _grid_code(v, E_EBITS, E_MBITS, E_BIAS, E_NAN, True), whole, NB, BS, PACK)
        blk_r = tl.reshape(r[:, None] * (C // BS) + (pid_c * (N // BS) + tl.arange(0, N // BS))[None, :], (NB,))
        tl.store(row_scales + blk_r, code.to(tl.uint8))
        # col output: transpose so that blocks (runs of BS along R) are rows; store as (C, R)
        xc = tl.reshape(tl.trans(col_t), (NB, BS))
        ic = tl.reshape(tl.trans(idx), (NB, BS))                        # index in the R x C tensor
        v, code, dec, s, amax, sb = quantize_rows(
            xc, ones, ones[:, None], ic, x_ptr, scale_table_ptr, s_enc_col, seed, offset_col,
            E_EBITS, E_MBITS, E_BIAS, E_MAX, E_EMAX, S_KIND, S_EBITS, S_MBITS, S_BIAS, S_MAX, S_NAN, RULE,
            S_ROUND, TENSOR_SCALE, ROUNDING, True, DIVISION)
        out_c = tl.reshape(c[:, None].to(tl.int64) * R + r[None, :], (NB, BS))
        store_codes(col_codes, out_c, _grid_code(v, E_EBITS, E_MBITS, E_BIAS, E_NAN, True), whole, NB, BS, PACK)
        blk_c = tl.reshape(c[:, None] * (R // BS) + (pid_r * (N // BS) + tl.arange(0, N // BS))[None, :], (NB,))
        tl.store(col_scales + blk_c, code.to(tl.uint8))
