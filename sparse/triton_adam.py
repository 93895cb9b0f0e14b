"""Fused masked-Adam step in Triton (AdamS / AST AdamW), bit-exact with sparse/reference.py.

IEEE division and square root (div_rn, sqrt_rn), bias corrections as host reciprocals; each multiply and add rounds separately
in the reference's order (the launch passes ``enable_fp_fusion=False``, so a GPU build does
not contract them into FMAs).
"""

import triton
import triton.language as tl


@triton.jit
def masked_adam_kernel(w_ptr, g_ptr, m_ptr, v_ptr, k_ptr, numel,
                       lr, b1, b2, eps, c_wd, c1, c2, c_a, c_l, ibc1, ibc2,
                       MODE: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    w = tl.load(w_ptr + offs, mask=ok, other=0.0)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0)
    m = tl.load(m_ptr + offs, mask=ok, other=0.0)
    v = tl.load(v_ptr + offs, mask=ok, other=0.0)
    w1 = w * c_wd
    mb = m * b1
    gc = g * c1
    mn = mb + gc
    d = mn
    vs = g
    if HAS_MASK:
        kept = tl.load(k_ptr + offs, mask=ok, other=1) != 0
        if MODE == 0:
            sgn = tl.where(w > 0.0, 1.0, tl.where(w < 0.0, -1.0, 0.0))
            t1 = mn * c_a
            t2 = sgn * c_l
            dp = t1 + t2
        else:
            t2 = w * c_l
            dp = mn + t2
        d = tl.where(kept, mn, dp)
        vs = d
    vb = v * b2
    dd = vs * vs
    vc = dd * c2
    vn = vb + vc
    den = tl.sqrt_rn(vn * ibc2) + eps
    step = tl.div_rn(d * ibc1, den) * lr
    tl.store(w_ptr + offs, w1 - step, mask=ok)
    tl.store(m_ptr + offs, mn, mask=ok)
    tl.store(v_ptr + offs, vn, mask=ok)
