"""Block quantization in Triton, mirroring csrc/include/lowprec/formats.h and
lowprec/reference operation for operation (bit-exact):

  amax_b  = max |x| over the block (NaN propagates)
  code_b  = scale rule(amax_b, S_enc);  s_b = decode(code_b) / S_enc     (div_rn: IEEE division)
  x_s     = x / s_b (0 where s_b == 0), rounded on the element grid (nearest-even, stochastic
            with Philox byte R: up iff floor(256 frac) + R >= 256, or toward zero), saturated.

Inputs are contiguous blocks [n_blocks, BS] in fp32, bf16 or fp16 (widened to fp32 as they
load, which is exact); each program takes ROWS blocks. With PACK, 4-bit codes leave the
kernel two per byte (even index in the low nibble), [n_blocks, BS / 2].
"""

import triton
import triton.language as tl


@triton.jit
def _exp2i(e):
    """2**e for e in the fp32 normal range, from the bit pattern."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _exp_field(a):
    """floor(log2(a)) for normal a (subnormals read as -127)."""
    return ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def _round_grid(x, EBITS: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr, MAXV: tl.constexpr,
                MODE: tl.constexpr, rand):
    """Round onto a minifloat grid (MODE 0 nearest-even, 1 stochastic, 2 zero, 3 up), saturate, keep the sign."""
    a = tl.abs(x)
    a = tl.where(a > MAXV, MAXV, a)
    e = tl.maximum(_exp_field(a), 1 - BIAS)
    ulp = _exp2i(e - MBITS)
    q = a * _exp2i(MBITS - e)
    fl = tl.floor(q)
    d = q - fl
    if MODE == 0:
        odd = fl - 2.0 * tl.floor(fl * 0.5)
        r = fl + tl.where((d > 0.5) | ((d == 0.5) & (odd == 1.0)), 1.0, 0.0)
    elif MODE == 1:
        frac8 = tl.floor(d * 256.0)
        r = fl + tl.where(frac8 + rand.to(tl.float32) >= 256.0, 1.0, 0.0)
    elif MODE == 2:
        r = fl
    else:
        r = fl + tl.where(d > 0.0, 1.0, 0.0)
    v = r * ulp
    v = tl.where(v > MAXV, MAXV, v)
    sign = x.to(tl.int32, bitcast=True) & (-2147483648)
    return (v.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _grid_code(v, EBITS: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr, NAN_CODE: tl.constexpr,
               SIGNED: tl.constexpr):
    a = tl.abs(v)
    emin = 1 - BIAS
    e = tl.maximum(_exp_field(a), emin)
    normal = a >= _exp2i(emin + 0 * e)
    scaled = a * _exp2i(MBITS - e)
    man = scaled.to(tl.int32) - tl.where(normal, 1 << MBITS, 0)
    code = (tl.where(normal, e + BIAS, 0) << MBITS) | man
    if SIGNED:
        code = code | (((v.to(tl.int32, bitcast=True) >> 31) & 1) << (EBITS + MBITS))
    return tl.where(a != a, NAN_CODE, code)


@triton.jit
def block_scale(amax, row_ok, scale_table_ptr, s_enc, E_MBITS: tl.constexpr, E_MAX: tl.constexpr,
                E_EMAX: tl.constexpr, S_KIND: tl.constexpr, S_EBITS: tl.constexpr, S_MBITS: tl.constexpr,
                S_BIAS: tl.constexpr, S_MAX: tl.constexpr, S_NAN: tl.constexpr, RULE: tl.constexpr,
                S_ROUND: tl.constexpr, TENSOR_SCALE: tl.constexpr, DIVISION: tl.constexpr = 0):
    """(scale code, decoded scale or fp32 scale, s_eff = decoded / S_enc) of blocks with these amaxes.
    DIVISION 1 (reciprocal): scale_hp = amax * (S_enc * fp32(1 / elem_max)), s_eff = decoded * fp32(1 / S_enc)."""
    bad = (amax != amax) | (amax == float("inf"))
    if S_KIND == 0:  # e8m0
        am = tl.where(bad, 0.0, amax)          # (e8m0 scales take no tensor scale)
        f = _exp_field(am)
        mant = am.to(tl.int32, bitcast=True) & 0x7FFFFF
        if RULE == 0:
            shared = f - E_EMAX
        elif RULE == 1:
            shared = f + tl.where(mant != 0, 1, 0) - E_EMAX
        elif RULE == 2:
            half_ulp = _exp2i(tl.maximum(f - E_MBITS - 1, -126))
            shared = _exp_field(am + half_ulp) - E_EMAX
        elif RULE == 5:   # rfloor: floor(log2(amax / elem_max)), subnormal quotients included
            r = tl.math.div_rn(am, E_MAX)
            shared = _floor_log2_any(r)
        else:
            r = tl.math.div_rn(am, E_MAX)
            fr = _exp_field(r)
            mr = r.to(tl.int32, bitcast=True) & 0x7FFFFF
            shared = tl.where(fr > -127, fr + tl.where(mr != 0, 1, 0), tl.where(r > 5.877471754111438e-39, -126, -127))
        shared = tl.where(am > 0.0, shared, -1000)
        code = tl.minimum(tl.maximum(shared, -127), 127) + 127
        code = tl.where(bad, 255, code)
        dec = tl.load(scale_table_ptr + code, mask=row_ok, other=1.0)
    elif S_KIND == 1:  # unsigned minifloat, amax rule
        scale_hp = _high_precision_scale(amax, s_enc, E_MAX, DIVISION)
        v = _round_grid(tl.where(bad, 0.0, scale_hp), S_EBITS, S_MBITS, S_BIAS, S_MAX, S_ROUND, 0)
        code = _grid_code(v, S_EBITS, S_MBITS, S_BIAS, 0, False)
        code = tl.where(bad, S_NAN, code)
        dec = tl.load(scale_table_ptr + code, mask=row_ok, other=1.0)
    else:  # fp32 scales
        code = tl.zeros_like(amax).to(tl.int32)
        scale_hp = _high_precision_scale(amax, s_enc, E_MAX, DIVISION)
        dec = scale_hp
    if DIVISION == 1:
        s = dec * _reciprocal(s_enc + tl.zeros_like(dec))
    else:
        s = tl.math.div_rn(dec, s_enc + tl.zeros_like(dec))   # (0 * dec would be NaN for an inf scale)
    return code, dec, s


@triton.jit
def _floor_log2_any(r):
    """floor(log2(r)) for finite r > 0, subnormal r included (the index of its top bit - 149)."""
    b = r.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    f = (b >> 23) - 127
    top = _top_bit(b)
    return tl.where(f > -127, f, top - 149)


@triton.jit
def _top_bit(b):
    """Index of the highest set bit of a positive int32 (0 for b = 1)."""
    t = tl.zeros_like(b)
    for k in tl.static_range(5):
        sh = 16 >> k
        up = (b >> sh) != 0
        t = t + tl.where(up, sh, 0)
        b = tl.where(up, b >> sh, b)
    return t


@triton.jit
def gaussian_statistic(x, amax, KAPPA: tl.constexpr, N: tl.constexpr):
    """QuEST's clipping value of every row of x (``reference.scales.gaussian_statistic``):
    (kappa * sqrt(S / n)) * amax, S the pairwise sum of (x / amax)^2, clamped to the fp32 max;
    0 for amax 0, amax itself when it is NaN or Inf."""
    finite = (amax == amax) & (amax < float("inf")) & (amax > 0.0)
    safe = tl.where(finite, amax, 1.0)
    y = tl.math.div_rn(x, safe[:, None] + tl.zeros_like(x))
    ms = tl.math.div_rn(pairwise_row_sum(y * y), N + tl.zeros_like(amax))
    c = (KAPPA * tl.math.sqrt_rn(ms)) * safe
    c = tl.where(c > 3.4028234663852886e38, 3.4028234663852886e38, c)
    return tl.where(finite, c, tl.where(amax == 0.0, 0.0, amax))


@triton.jit
def _reciprocal(x):
    """fp32(1 / x), correctly rounded."""
    return tl.math.div_rn(1.0 + tl.zeros_like(x), x)


@triton.jit
def _high_precision_scale(amax, s_enc, E_MAX: tl.constexpr, DIVISION: tl.constexpr):
    """(amax / elem_max) * S_enc, or amax * (S_enc * fp32(1 / elem_max)) for reciprocal division."""
    if DIVISION == 1:
        inv_max = _reciprocal(E_MAX + tl.zeros_like(amax))
        return amax * (s_enc * inv_max)
    return tl.math.div_rn(amax, E_MAX) * s_enc


@triton.jit
def scale_elements(x, sb, DIVISION: tl.constexpr):
    """x / s_b, or x * min(fp32(1 / s_b), fp32 max) for reciprocal division; 0 where s_b == 0."""
    if DIVISION == 1:
        r = _reciprocal(sb)
        xs = x * tl.where(r > 3.4028234663852886e38, 3.4028234663852886e38, r)   # NaN stays NaN
    else:
        xs = tl.math.div_rn(x, sb)
    return tl.where(sb == 0.0, 0.0, xs)


@triton.jit
def philox_byte(seed, offset, idx):
    """Byte idx of the Philox stream (seed, offset): byte idx % 16 of randint4x(seed, offset + idx // 16)."""
    counter = offset + idx // 16
    r0, r1, r2, r3 = tl.randint4x(seed, counter)
    k = idx % 16
    word = tl.where(k < 4, r0, tl.where(k < 8, r1, tl.where(k < 12, r2, r3)))
    return (word >> ((k % 4) * 8).to(tl.uint32)) & 0xFF


@triton.jit
def row_amax(x):
    """Max |x| along axis 1, NaN propagating."""
    a = tl.abs(x)
    isnan = a != a
    amax = tl.max(tl.where(isnan, 0.0, a), axis=1)
    has_nan = tl.max(isnan.to(tl.int32), axis=1) > 0
    return tl.where(has_nan, float("nan"), amax)


@triton.jit
def quantize_rows(x, row_ok, mask, idx, rand_ptr, scale_table_ptr, s_enc, seed, offset,
                  E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr, E_MAX: tl.constexpr,
                  E_EMAX: tl.constexpr, S_KIND: tl.constexpr, S_EBITS: tl.constexpr, S_MBITS: tl.constexpr,
                  S_BIAS: tl.constexpr, S_MAX: tl.constexpr, S_NAN: tl.constexpr, RULE: tl.constexpr,
                  S_ROUND: tl.constexpr, TENSOR_SCALE: tl.constexpr, ROUNDING: tl.constexpr,
                  INLINE_RNG: tl.constexpr, DIVISION: tl.constexpr = 0, FOUR_OVER_SIX: tl.constexpr = 0,
                  STATISTIC: tl.constexpr = 0, KAPPA: tl.constexpr = 0.0, N: tl.constexpr = 1):
    """Quantize every row of the fp32 tile ``x`` as one block.  ``idx`` holds each element's
    row-major index in the tensor being quantized (Philox counter offset + idx // 16).
    FOUR_OVER_SIX 1 (mse) / 2 (mae): each block takes the scale mapping its amax to 4 where
    that has the lower round-to-nearest error (``reference.scales.four_over_six_codes``).
    STATISTIC 1 (gaussian): the scale maps each block's Gaussian clipping value (KAPPA, over
    its N elements: ``gaussian_statistic``) to the element max instead of its amax.
    Returns (grid values v, scale code, decoded scale or fp32 scale, s_eff, amax, sb)."""
    amax = row_amax(x)
    stat = amax
    if STATISTIC == 1:
        stat = gaussian_statistic(x, amax, KAPPA, N)
    code, dec, s = block_scale(stat, row_ok, scale_table_ptr, s_enc, E_MBITS, E_MAX, E_EMAX, S_KIND, S_EBITS,
                               S_MBITS, S_BIAS, S_MAX, S_NAN, RULE, S_ROUND, TENSOR_SCALE, DIVISION)
    if FOUR_OVER_SIX > 0:
        code4, dec4, s4 = block_scale(amax, row_ok, scale_table_ptr, s_enc, E_MBITS, 4.0, E_EMAX, S_KIND, S_EBITS,
                                      S_MBITS, S_BIAS, S_MAX, S_NAN, RULE, S_ROUND, TENSOR_SCALE, DIVISION)
        err6 = rtn_block_error(x, s, E_EBITS, E_MBITS, E_BIAS, E_MAX, DIVISION, FOUR_OVER_SIX)
        err4 = rtn_block_error(x, s4, E_EBITS, E_MBITS, E_BIAS, E_MAX, DIVISION, FOUR_OVER_SIX)
        use4 = (err4 < err6) & (amax < float("inf"))          # NaN amax compares false too
        code = tl.where(use4, code4, code)
        dec = tl.where(use4, dec4, dec)
        s = tl.where(use4, s4, s)

    # elements
    sb = s[:, None] + tl.zeros_like(x)
    xs = scale_elements(x, sb, DIVISION)
    if ROUNDING == 1:
        if INLINE_RNG:
            rbyte = philox_byte(seed, offset, idx)
        else:
            rbyte = tl.load(rand_ptr + idx, mask=mask, other=0)
    else:
        rbyte = 0
    v = _round_grid(xs, E_EBITS, E_MBITS, E_BIAS, E_MAX, ROUNDING, rbyte)
    return v, code, dec, s, amax, sb


@triton.jit
def pairwise_row_sum(t):
    """Sum of each row of the [R, W] tile (W a power of two) as a pairwise tree:
    (t[2i] + t[2i+1]) level by level, the order of ``reference.scales.pairwise_sum``."""
    for i in tl.static_range(15):                    # W <= 32768 (2-D tiles of 128 x 128)
        if t.shape[1] > 1:
            a, b = tl.split(tl.reshape(t, (t.shape[0], t.shape[1] // 2, 2)))
            t = a + b
    return tl.reshape(t, (t.shape[0],))


@triton.jit
def rtn_block_error(x, s, E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr,
                    E_MAX: tl.constexpr, DIVISION: tl.constexpr, METRIC: tl.constexpr):
    """Per row of x: the pairwise sum of (x - v * s)^2 (METRIC 1) or |x - v * s| (METRIC 2),
    v = round-to-nearest grid value of x / s (``reference.scales.rtn_block_error``)."""
    sb = s[:, None] + tl.zeros_like(x)
    v = _round_grid(scale_elements(x, sb, DIVISION), E_EBITS, E_MBITS, E_BIAS, E_MAX, 0, 0)
    d = x - v * sb
    if METRIC == 1:
        e = d * d
    else:
        e = tl.abs(d)
    return pairwise_row_sum(e)


@triton.jit
def ms_eden_codes(x, v, sb, code, dec, amax, rows, row_ok, scale_table_ptr, s_enc, seed, offset,
                  S_EBITS: tl.constexpr, S_MBITS: tl.constexpr, S_BIAS: tl.constexpr, S_MAX: tl.constexpr,
                  DIVISION: tl.constexpr):
    """MS-EDEN's scale pass (``reference.ms_eden.corrected_scale_codes``) for blocks whose
    elements ``v`` were rounded to nearest under ``sb``: c = <x, x> / <x, v s> (pairwise fp32
    sums; 1 where the denominator is not > 0), t = decode * c rounded stochastically onto the
    scale grid with the Philox byte of the block index; a non-finite t or block keeps its code.
    Returns (code, decoded scale, s_eff)."""
    num = pairwise_row_sum(x * x)
    den = pairwise_row_sum(x * (v * sb))
    c = tl.where(den > 0.0, tl.math.div_rn(num, tl.where(den > 0.0, den, 1.0)), 1.0)
    t = dec * c
    t_ok = (t == t) & (tl.abs(t) < float("inf"))
    block_ok = (amax == amax) & (amax < float("inf"))
    rb = philox_byte(seed, offset, rows.to(tl.int64))
    r = _round_grid(tl.where(t_ok, t, 0.0), S_EBITS, S_MBITS, S_BIAS, S_MAX, 1, rb)
    new = _grid_code(r, S_EBITS, S_MBITS, S_BIAS, 0, False)
    code = tl.where(t_ok & block_ok, new, code)
    dec = tl.load(scale_table_ptr + code, mask=row_ok, other=1.0)
    if DIVISION == 1:
        s = dec * _reciprocal(s_enc + tl.zeros_like(dec))
    else:
        s = tl.math.div_rn(dec, s_enc + tl.zeros_like(dec))
    return code, dec, s


@triton.jit
def store_codes(codes_ptr, index, code, mask, R: tl.constexpr, W: tl.constexpr, PACK: tl.constexpr):
    """Element codes of an [R, W] tile at element positions ``index`` (rows hold runs of whole
    blocks, so pairs (2j, 2j + 1) never straddle one); with PACK two per byte at index // 2,
    the even element in the low nibble (``pack_nibbles``)."""
    if PACK:
        lo, hi = tl.split(tl.reshape(code, (R, W // 2, 2)))
        even, _ = tl.split(tl.reshape(index, (R, W // 2, 2)))
        ok, _ = tl.split(tl.reshape(mask, (R, W // 2, 2)))
        tl.store(codes_ptr + even // 2, (lo | (hi << 4)).to(tl.uint8), mask=ok)
    else:
        tl.store(codes_ptr + index, code.to(tl.uint8), mask=mask)


@triton.jit
def _block_kernel(x_ptr, rand_ptr, scale_table_ptr, codes_ptr, scales_ptr, xhat_ptr, seff_ptr, amax_ptr,
                  n_blocks, s_enc, seed, offset,
                  BS: tl.constexpr, BS_P2: tl.constexpr, ROWS: tl.constexpr,
                  E_EBITS: tl.constexpr, E_MBITS: tl.constexpr, E_BIAS: tl.constexpr, E_MAX: tl.constexpr,
                  E_NAN: tl.constexpr, E_EMAX: tl.constexpr,
                  S_KIND: tl.constexpr, S_EBITS: tl.constexpr, S_MBITS: tl.constexpr, S_BIAS: tl.constexpr,
                  S_MAX: tl.constexpr, S_NAN: tl.constexpr, RULE: tl.constexpr, S_ROUND: tl.constexpr,
                  TENSOR_SCALE: tl.constexpr, ROUNDING: tl.constexpr, INLINE_RNG: tl.constexpr,
                  WRITE_CODES: tl.constexpr, WRITE_XHAT: tl.constexpr, PACK: tl.constexpr, DIVISION: tl.constexpr,
                  FOUR_OVER_SIX: tl.constexpr = 0, STATISTIC: tl.constexpr = 0, KAPPA: tl.constexpr = 0.0,
                  MS_EDEN: tl.constexpr = 0):
    """MS_EDEN 1: ROUNDING is 0 (the elements round to nearest) and each block's scale code is
    then corrected and rounded stochastically with the Philox byte of its index
    (``ms_eden_codes``); the tensor scale passed in is already that of twice the amax."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BS_P2)
    row_ok = rows < n_blocks
    mask = row_ok[:, None] & (cols < BS)[None, :]
    idx = rows[:, None].to(tl.int64) * BS + cols[None, :]
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    v, code, dec, s, amax, sb = quantize_rows(
        x, row_ok, mask, idx, rand_ptr, scale_table_ptr, s_enc, seed, offset, E_EBITS, E_MBITS, E_BIAS, E_MAX,
        E_EMAX, S_KIND, S_EBITS, S_MBITS, S_BIAS, S_MAX, S_NAN, RULE, S_ROUND, TENSOR_SCALE, ROUNDING, INLINE_RNG,
        DIVISION, FOUR_OVER_SIX, STATISTIC, KAPPA, BS)
    if MS_EDEN:
        code, dec, s = ms_eden_codes(x, v, sb, code, dec, amax, rows, row_ok, scale_table_ptr, s_enc, seed, offset,
                                     S_EBITS, S_MBITS, S_BIAS, S_MAX, DIVISION)
        sb = s[:, None] + tl.zeros_like(x)
    if WRITE_CODES:
        store_codes(codes_ptr, idx, _grid_code(v, E_EBITS, E_MBITS, E_BIAS, E_NAN, True), mask, ROWS, BS_P2, PACK)
        if S_KIND == 2:
            tl.store(scales_ptr + rows, dec, mask=row_ok)
        else:
            tl.store(scales_ptr + rows, code.to(tl.uint8), mask=row_ok)
    if WRITE_XHAT:
        tl.store(xhat_ptr + idx, v * sb, mask=mask)
        tl.store(amax_ptr + rows, amax, mask=row_ok)
        tl.store(seff_ptr + rows, s, mask=row_ok)


@triton.jit
def _dequant_kernel(codes_ptr, scales_ptr, scale_table_ptr, elem_table_ptr, out_ptr, n_blocks, tensor_scale,
                    BS: tl.constexpr, BS_P2: tl.constexpr, ROWS: tl.constexpr, PACKED: tl.constexpr,
                    S_KIND: tl.constexpr, TENSOR_SCALE: tl.constexpr, OUT_BF16: tl.constexpr,
                    DIVISION: tl.constexpr):
    """out = value(code) * s_eff per block, s_eff = decode(scale code) [/ tensor scale]
    (S_KIND 2: the scales are fp32 s_eff already). The fp32 product is cast to out's dtype
    as it is stored (round to nearest even, as torch's .to())."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BS_P2)
    row_ok = rows < n_blocks
    mask = row_ok[:, None] & (cols < BS)[None, :]
    idx = rows[:, None].to(tl.int64) * BS + cols[None, :]
    if PACKED:
        half = tl.arange(0, BS_P2 // 2)
        b = tl.load(codes_ptr + rows[:, None].to(tl.int64) * (BS // 2) + half[None, :],
                    mask=row_ok[:, None] & (half < BS // 2)[None, :], other=0).to(tl.int32)
        c = tl.reshape(tl.join(b & 0xF, b >> 4), (ROWS, BS_P2))
    else:
        c = tl.load(codes_ptr + idx, mask=mask, other=0).to(tl.int32)
    if S_KIND == 2:
        s = tl.load(scales_ptr + rows, mask=row_ok, other=0.0)
    else:
        sc = tl.load(scales_ptr + rows, mask=row_ok, other=0).to(tl.int32)
        s = tl.load(scale_table_ptr + sc, mask=row_ok, other=0.0)
    if TENSOR_SCALE:
        if DIVISION == 1:
            s = s * _reciprocal(tensor_scale + tl.zeros_like(s))
        else:
            s = tl.math.div_rn(s, tensor_scale + tl.zeros_like(s))
    v = tl.load(elem_table_ptr + c, mask=mask, other=0.0)
    out = v * s[:, None]
    if OUT_BF16:
        out = to_bf16_rne(out)
    tl.store(out_ptr + idx, out, mask=mask)


@triton.jit
def to_bf16_rne(x):
    """fp32 -> bf16, round to nearest even on the bit pattern (as torch's .to(); the
    interpreter's cast truncates or rounds half up): add 0x7FFF plus the lowest kept bit, keep
    the top 16 bits; NaN stays NaN."""
    b = x.to(tl.uint32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    r = tl.where(x != x, (b >> 16) | 0x40, r)
    return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def round_to_input_dtype(x, IN_DTYPE: tl.constexpr):
    """fp32 values rounded to the input's dtype and widened back (IN_DTYPE 0 fp32: unchanged,
    1 bf16, 2 fp16): what a transform that returns its input's dtype hands on."""
    if IN_DTYPE == 1:
        x = to_bf16_rne(x).to(tl.float32)
    elif IN_DTYPE == 2:
        x = x.to(tl.float16).to(tl.float32)
    return x
