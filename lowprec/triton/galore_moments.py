"""GaLore's Adam moments in Triton, bit-exact with lowprec/galore/moments.py.

``fp32_moments_kernel``: M, V fp32 in place, N out.  ``lowbit_moments_kernel``: M and
S = sqrt(V) read from their stored codes (E2M1 packed two per byte, even index low, or one
byte each) and block-scale codes; each program takes ROWS blocks of BS along the last dim
and works on the even and the odd columns of each block as two half tiles, so that packed
bytes are written whole.  PASS 0 writes each block's amax of M' and sqrt(V') (the host takes
the max for the tensor scales); PASS 1 writes N and the stochastically rounded M', S'.
The tensor scales come in as a device tensor [ts(M), ts(S), S_enc(M'), S_enc(S')], so no
launch waits on the GPU for them.
Every multiply and add rounds separately (launch with ``enable_fp_fusion=False``); division
and square root are IEEE (div_rn, sqrt_rn).
"""

import triton
import triton.language as tl

from .quantize import _grid_code, _round_grid, block_scale, philox_byte, row_amax


@triton.jit
def _adam(m, v, r, b1, b2, c1, c2, ibc1, ibc2, eps):
    mb = m * b1
    rc = r * c1
    mn = mb + rc
    vb = v * b2
    rr = r * r
    vc = rr * c2
    vn = vb + vc
    n = tl.math.div_rn(mn * ibc1, tl.math.sqrt_rn(vn * ibc2) + eps)
    return mn, vn, n


@triton.jit
def fp32_moments_kernel(r_ptr, m_ptr, v_ptr, n_ptr, numel, b1, b2, c1, c2, ibc1, ibc2, eps, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    r = tl.load(r_ptr + offs, mask=ok, other=0.0)
    m = tl.load(m_ptr + offs, mask=ok, other=0.0)
    v = tl.load(v_ptr + offs, mask=ok, other=0.0)
    mn, vn, n = _adam(m, v, r, b1, b2, c1, c2, ibc1, ibc2, eps)
    tl.store(m_ptr + offs, mn, mask=ok)
    tl.store(v_ptr + offs, vn, mask=ok)
    tl.store(n_ptr + offs, n, mask=ok)


@triton.jit
def _decode(codes_ptr, scales_ptr, etab_ptr, stab_ptr, ts, i, j, kb, ok, LDC: tl.constexpr, LDS: tl.constexpr,
            PACKED: tl.constexpr):
    """table[code] * (scale_table[scode] / tensor scale) of stored element (i, j)."""
    if PACKED:
        byte = tl.load(codes_ptr + i * LDC + j // 2, mask=ok, other=0).to(tl.int32)
        code = (byte >> ((j % 2) * 4)) & 0xF
    else:
        code = tl.load(codes_ptr + i * LDC + j, mask=ok, other=0).to(tl.int32)
    sc = tl.load(scales_ptr + i * LDS + kb, mask=ok, other=0).to(tl.int32)
    dec = tl.load(stab_ptr + sc, mask=ok, other=1.0)
    s_eff = tl.math.div_rn(dec, ts + tl.zeros_like(dec))   # (0 * dec would be NaN for an inf scale)
    return tl.load(etab_ptr + code, mask=ok, other=0.0) * s_eff


@triton.jit
def _half_update(r_ptr, mc, ms, sc, ss, etab, stab, ts_m, ts_s, cols, i, j, kb, ok, b1, b2, c1, c2, ibc1, ibc2,
                 eps, LDC: tl.constexpr, LDS: tl.constexpr, PACKED: tl.constexpr):
    """(M', sqrt(V'), N) at columns ``j`` (0 where not ``ok``)."""
    r = tl.load(r_ptr + i * cols + j, mask=ok, other=0.0)
    m = _decode(mc, ms, etab, stab, ts_m, i, j, kb, ok, LDC, LDS, PACKED)
    so = _decode(sc, ss, etab, stab, ts_s, i, j, kb, ok, LDC, LDS, PACKED)
    mn, vn, n = _adam(m, so * so, r, b1, b2, c1, c2, ibc1, ibc2, eps)
    return tl.where(ok, mn, 0.0), tl.where(ok, tl.math.sqrt_rn(vn), 0.0), n


@triton.jit
def _amax2(x0, x1):
    """Row amax over two half tiles, NaN propagating."""
    a0 = row_amax(x0)
    a1 = row_amax(x1)
    return tl.where((a0 != a0) | (a1 != a1), float("nan"), tl.maximum(a0, a1))


@triton.jit
def _finite_amax2(x0, x1):
    """Row amax over the finite values of two half tiles (for the tensor scale: NaN compares false)."""
    a0 = tl.abs(x0)
    a1 = tl.abs(x1)
    return tl.maximum(tl.max(tl.where(a0 < float("inf"), a0, 0.0), axis=1),
                      tl.max(tl.where(a1 < float("inf"), a1, 0.0), axis=1))


@triton.jit
def _round_half(x, s, idx, seed, offset, E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr,
                E_MAX: tl.constexpr, E_NAN: tl.constexpr):
    sb = s[:, None] + tl.zeros_like(x)
    xs = tl.where(sb == 0.0, 0.0, tl.math.div_rn(x, sb))
    v = _round_grid(xs, E_EBITS, E_MBITS, E_BIAS, E_MAX, 1, philox_byte(seed, offset, idx))
    return _grid_code(v, E_EBITS, E_MBITS, E_BIAS, E_NAN, True)


@triton.jit
def _store_moment(x0, x1, blk, blk_ok, i, kb, t, j0, j1, cols, codes_ptr, scales_ptr, stab_ptr, s_enc, seed, offset,
                  LDC: tl.constexpr, PACKED: tl.constexpr, HALF: tl.constexpr,
                  E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr, E_MAX: tl.constexpr,
                  E_NAN: tl.constexpr, E_EMAX: tl.constexpr, S_KIND: tl.constexpr, S_EBITS: tl.constexpr,
                  S_MBITS: tl.constexpr, S_BIAS: tl.constexpr, S_MAX: tl.constexpr, S_NAN: tl.constexpr,
                  RULE: tl.constexpr, S_ROUND: tl.constexpr, TENSOR_SCALE: tl.constexpr):
    """Stochastically rounded codes and scale codes of one moment (blocks = rows of the tiles)."""
    code, _, s = block_scale(_amax2(x0, x1), blk_ok, stab_ptr, s_enc, E_MBITS, E_MAX, E_EMAX, S_KIND, S_EBITS,
                             S_MBITS, S_BIAS, S_MAX, S_NAN, RULE, S_ROUND, TENSOR_SCALE)
    c0 = _round_half(x0, s, (i * cols + j0).to(tl.int64), seed, offset, E_EBITS, E_MBITS, E_BIAS, E_MAX, E_NAN)
    c1 = _round_half(x1, s, (i * cols + j1).to(tl.int64), seed, offset, E_EBITS, E_MBITS, E_BIAS, E_MAX, E_NAN)
    whole = blk_ok[:, None] & (t[None, :] >= 0)
    if PACKED:
        byte = (c0 & 0xF) | ((c1 & 0xF) << 4)
        tl.store(codes_ptr + i * LDC + kb * HALF + t[None, :], byte.to(tl.uint8), mask=whole)
    else:
        tl.store(codes_ptr + i * LDC + j0, c0.to(tl.uint8), mask=whole)
        tl.store(codes_ptr + i * LDC + j1, c1.to(tl.uint8), mask=whole)
    tl.store(scales_ptr + blk, code.to(tl.uint8), mask=blk_ok)        # scale codes [rows, bpr] contiguous


@triton.jit
def lowbit_moments_kernel(r_ptr, n_ptr, mc, ms, sc, ss, omc, oms, osc, oss, amax_ptr, etab, stab,
                          cols, bpr, n_blocks, scal_ptr, b1, b2, c1, c2, ibc1, ibc2, eps,
                          seed, off_m, off_s,
                          LDC: tl.constexpr, LDS: tl.constexpr, BS: tl.constexpr, HALF: tl.constexpr,
                          ROWS: tl.constexpr, PACKED: tl.constexpr, PASS: tl.constexpr,
                          E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr, E_MAX: tl.constexpr,
                          E_NAN: tl.constexpr, E_EMAX: tl.constexpr, S_KIND: tl.constexpr, S_EBITS: tl.constexpr,
                          S_MBITS: tl.constexpr, S_BIAS: tl.constexpr, S_MAX: tl.constexpr, S_NAN: tl.constexpr,
                          RULE: tl.constexpr, S_ROUND: tl.constexpr, TENSOR_SCALE: tl.constexpr):
    # tensor scales of the stored M and S, then S_enc of M' and S' (1 without tensor scales)
    ts_m = tl.load(scal_ptr)
    ts_s = tl.load(scal_ptr + 1)
    senc_m = tl.load(scal_ptr + 2)
    senc_s = tl.load(scal_ptr + 3)
    blk = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    blk_ok = blk < n_blocks
    t = tl.arange(0, HALF)
    i = (blk // bpr)[:, None] + 0 * t[None, :]
    kb = (blk % bpr)[:, None] + 0 * t[None, :]
    j0 = kb * BS + 2 * t[None, :]
    j1 = j0 + 1
    ok0 = blk_ok[:, None] & (j0 < cols)
    ok1 = blk_ok[:, None] & (j1 < cols)
    m0, s0, n0 = _half_update(r_ptr, mc, ms, sc, ss, etab, stab, ts_m, ts_s, cols, i, j0, kb, ok0, b1, b2, c1, c2,
                              ibc1, ibc2, eps, LDC, LDS, PACKED)
    m1, s1, n1 = _half_update(r_ptr, mc, ms, sc, ss, etab, stab, ts_m, ts_s, cols, i, j1, kb, ok1, b1, b2, c1, c2,
                              ibc1, ibc2, eps, LDC, LDS, PACKED)
    if PASS == 0:
        tl.store(amax_ptr + 2 * blk, _finite_amax2(m0, m1), mask=blk_ok)
        tl.store(amax_ptr + 2 * blk + 1, _finite_amax2(s0, s1), mask=blk_ok)
    else:
        tl.store(n_ptr + i * cols + j0, n0, mask=ok0)
        tl.store(n_ptr + i * cols + j1, n1, mask=ok1)
        _store_moment(m0, m1, blk, blk_ok, i, kb, t, j0, j1, cols, omc, oms, stab, senc_m, seed, off_m, LDC, PACKED,
                      HALF, E_EBITS, E_MBITS, E_BIAS, E_MAX, E_NAN, E_EMAX, S_KIND, S_EBITS, S_MBITS, S_BIAS, S_MAX,
                      S_NAN, RULE, S_ROUND, TENSOR_SCALE)
        _store_moment(s0, s1, blk, blk_ok, i, kb, t, j0, j1, cols, osc, oss, stab, senc_s, seed, off_s, LDC, PACKED,
                      HALF, E_EBITS, E_MBITS, E_BIAS, E_MAX, E_NAN, E_EMAX, S_KIND, S_EBITS, S_MBITS, S_BIAS, S_MAX,
                      S_NAN, RULE, S_ROUND, TENSOR_SCALE)
