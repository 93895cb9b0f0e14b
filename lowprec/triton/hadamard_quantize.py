"""Fused block Hadamard + amax + quantize, row-wise and column-wise outputs in one pass.

Each program loads one N x N tile of X (R x C) once and forms two transforms of it:
  row output  X_r = X M_r^T along C   (the fprop operand: blocks along C)
  col output  X_c = M_c X along R     (the wgrad operand: blocks along R, stored transposed)
with M = H_h diag(s) per chunk of h elements (signs flipped first, then mixed), h = H_ROW
resp. H_COL (0: no transform on that side), s from each side's own sign vector.  The
transform is the reference's fast Walsh-Hadamard butterfly, operation for operation (stage
h = 1, 2, 4, ...: (a, b) -> (a + b, a - b) with a the element whose bit h is clear; then one
multiply by the fp32 value of 1/sqrt(h), then rounding to X's dtype as the reference transform
returns it), so the transformed values, and the codes, are bit for bit those of
``reference.hadamard_transform`` followed by ``reference.quantize``.
Each output is then quantized with the shared ``quantize_rows`` (blocks of BS | N).
Pass 0 only reduces the amax of both transforms over their finite values (for tensor
scales); pass 1 quantizes.  Stochastic bits follow each element's row-major index in the
R x C tensor being quantized.  X may be fp32, bf16 or fp16 (widened as it loads); with PACK,
4-bit codes are stored two per byte (even index in the low nibble) along each output's
block axis.
"""

import triton
import triton.language as tl

from .quantize import _grid_code, quantize_rows, round_to_input_dtype, store_codes


@triton.jit
def wht_rows(x, signs, norm, N: tl.constexpr, H: tl.constexpr, LOG_H: tl.constexpr, IN_DTYPE: tl.constexpr):
    """The transform of each run of H elements along axis 1 of the N x N tile ``x``:
    signs first, the butterfly stages in the reference's order, then the scale ``norm``, then
    rounded to the input's dtype (the reference transform returns its input's dtype)."""
    x = x * signs[None, :]
    for i in tl.static_range(LOG_H):
        # stage h = 2**i: runs of 2h split into halves a (bit h clear) and b
        y = tl.permute(tl.reshape(x, (N, N // (2 << i), 2, 1 << i)), (0, 1, 3, 2))
        a, b = tl.split(y)
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (N, N))
    return round_to_input_dtype(x * norm, IN_DTYPE)


@triton.jit
def hadamard_quantize_kernel(x_ptr, row_signs_ptr, col_signs_ptr, scale_table_ptr, amax_ptr,
                             row_codes, row_scales, col_codes, col_scales, row_t_ptr, col_t_ptr,
                             R, C, norm_row, norm_col, s_enc_row, s_enc_col, seed, offset_row, offset_col,
                             N: tl.constexpr, H_ROW: tl.constexpr, LOG_H_ROW: tl.constexpr,
                             H_COL: tl.constexpr, LOG_H_COL: tl.constexpr,
                             BS: tl.constexpr, PASS: tl.constexpr, WRITE_T: tl.constexpr, IN_DTYPE: tl.constexpr,
                             E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr, E_MAX: tl.constexpr,
                             E_NAN: tl.constexpr, E_EMAX: tl.constexpr,
                             S_KIND: tl.constexpr, S_EBITS: tl.constexpr, S_MBITS: tl.constexpr, S_BIAS: tl.constexpr,
                             S_MAX: tl.constexpr, S_NAN: tl.constexpr, RULE: tl.constexpr, S_ROUND: tl.constexpr,
                             TENSOR_SCALE: tl.constexpr, ROUNDING: tl.constexpr, PACK: tl.constexpr,
                             DIVISION: tl.constexpr, FOUR_OVER_SIX: tl.constexpr, STATISTIC: tl.constexpr = 0,
                             KAPPA: tl.constexpr = 0.0):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    r = pid_r * N + tl.arange(0, N)
    c = pid_c * N + tl.arange(0, N)
    idx = r[:, None].to(tl.int64) * C + c[None, :]
    tile = tl.load(x_ptr + idx).to(tl.float32)
    k = tl.arange(0, N)
    if H_ROW > 0:
        row_t = wht_rows(tile, tl.load(row_signs_ptr + k % H_ROW), norm_row, N, H_ROW, LOG_H_ROW, IN_DTYPE)
    else:
        row_t = tile
    # the column transform acts along R: transform the rows of the transposed tile
    if H_COL > 0:
        col_tt = wht_rows(tl.trans(tile), tl.load(col_signs_ptr + k % H_COL), norm_col, N, H_COL, LOG_H_COL, IN_DTYPE)
    else:
        col_tt = tl.trans(tile)
    if PASS == 0:
        pid = pid_r * tl.num_programs(1) + pid_c
        # the tensor amax is over finite values (NaN compares false): a NaN/Inf marks its blocks only
        a_r = tl.abs(row_t)
        a_c = tl.abs(col_tt)
        am_r = tl.max(tl.max(tl.where(a_r < float("inf"), a_r, 0.0), axis=1), axis=0)
        am_c = tl.max(tl.max(tl.where(a_c < float("inf"), a_c, 0.0), axis=1), axis=0)
        tl.store(amax_ptr + 2 * pid, am_r)
        tl.store(amax_ptr + 2 * pid + 1, am_c)
    else:
        if WRITE_T:
            tl.store(row_t_ptr + idx, row_t)
            tl.store(col_t_ptr + tl.trans(idx), col_tt)
        NB: tl.constexpr = N * (N // BS)
        ones = tl.full((NB,), 1, tl.int1)
        whole = tl.full((NB, BS), 1, tl.int1)
        # row output: blocks are runs of BS along C
        xr = tl.reshape(row_t, (NB, BS))
        ir = tl.reshape(idx, (NB, BS))
        v, code, dec, s, amax, sb = quantize_rows(
            xr, ones, ones[:, None], ir, x_ptr, scale_table_ptr, s_enc_row, seed, offset_row,
            E_EBITS, E_MBITS, E_BIAS, E_MAX, E_EMAX, S_KIND, S_EBITS, S_MBITS, S_BIAS, S_MAX, S_NAN, RULE,
            S_ROUND, TENSOR_SCALE, ROUNDING, True, DIVISION, FOUR_OVER_SIX, STATISTIC, KAPPA, BS)
        store_codes(row_codes, ir, _grid_code(v, E_EBITS, E_MBITS, E_BIAS, E_NAN, True), whole, NB, BS, PACK)
        blk_r = tl.reshape(r[:, None] * (C // BS) + (pid_c * (N // BS) + tl.arange(0, N // BS))[None, :], (NB,))
        tl.store(row_scales + blk_r, code.to(tl.uint8))
        # col output: the transposed tile's rows are runs of BS along R; store as (C, R)
        xc = tl.reshape(col_tt, (NB, BS))
        ic = tl.reshape(tl.trans(idx), (NB, BS))                        # index in the R x C tensor
        v, code, dec, s, amax, sb = quantize_rows(
            xc, ones, ones[:, None], ic, x_ptr, scale_table_ptr, s_enc_col, seed, offset_col,
            E_EBITS, E_MBITS, E_BIAS, E_MAX, E_EMAX, S_KIND, S_EBITS, S_MBITS, S_BIAS, S_MAX, S_NAN, RULE,
            S_ROUND, TENSOR_SCALE, ROUNDING, True, DIVISION, FOUR_OVER_SIX, STATISTIC, KAPPA, BS)
        out_c = tl.reshape(c[:, None].to(tl.int64) * R + r[None, :], (NB, BS))
        store_codes(col_codes, out_c, _grid_code(v, E_EBITS, E_MBITS, E_BIAS, E_NAN, True), whole, NB, BS, PACK)
        blk_c = tl.reshape(c[:, None] * (R // BS) + (pid_r * (N // BS) + tl.arange(0, N // BS))[None, :], (NB,))
        tl.store(col_scales + blk_c, code.to(tl.uint8))
