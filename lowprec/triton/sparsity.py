"""N:M masks and 2:4 compression in Triton, bit-exact with lowprec/reference/sparsity.py.

nm_mask: element i of a group is kept iff its rank (how many elements of the group are
larger, or equal with a lower index) is below n: the stable descending top-n.
compress_24: per group the first kept element goes to slot 0 and the second to slot 1;
metadata nibble = idx0 | idx1 << 2, two groups per byte (even group low).
"""

import triton
import triton.language as tl


@triton.jit
def _nm_mask_kernel(s_ptr, out_ptr, bad_ptr, groups, N: tl.constexpr, M: tl.constexpr, G: tl.constexpr):
    pid = tl.program_id(0)
    g = pid * G + tl.arange(0, G)
    i = tl.arange(0, M)
    ok = g < groups
    offs = g[:, None] * M + i[None, :]
    x = tl.load(s_ptr + offs, mask=ok[:, None], other=0.0)
    xi = x[:, :, None]                       # element being ranked
    xj = x[:, None, :]                       # competitors
    ii = i[None, :, None]
    jj = i[None, None, :]
    beats = (xj > xi) | ((xj == xi) & (jj < ii))
    rank = tl.sum(beats.to(tl.int32), axis=2)
    tl.store(out_ptr + offs, (rank < N).to(tl.int8), mask=ok[:, None])
    nan = tl.sum(((x != x) & ok[:, None]).to(tl.int32), axis=1)
    tl.atomic_add(bad_ptr, tl.sum(nan, axis=0))


@triton.jit
def _pick(x, k, i):
    """(value, index) of the first and second kept element of each [G, 4] group, and the count."""
    ki = k.to(tl.int32)
    pos = tl.cumsum(ki, axis=1) - 1
    first = (ki == 1) & (pos == 0)
    second = (ki == 1) & (pos == 1)
    # picked through the bit patterns (one nonzero term per sum): a float sum would turn a kept
    # -0.0 into +0.0
    xb = x.to(tl.int32, bitcast=True)
    v0 = tl.sum(tl.where(first, xb, 0), axis=1).to(tl.float32, bitcast=True)
    v1 = tl.sum(tl.where(second, xb, 0), axis=1).to(tl.float32, bitcast=True)
    i0 = tl.sum(tl.where(first, i[None, :], 0), axis=1)
    i1 = tl.sum(tl.where(second, i[None, :], 0), axis=1)
    return v0, v1, i0, i1, tl.sum(ki, axis=1)


@triton.jit
def _compress_24_kernel(w_ptr, k_ptr, v_ptr, meta_ptr, bad_ptr, pairs, P: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * P + tl.arange(0, P)
    i = tl.arange(0, 4)
    ok = p < pairs
    lo = p[:, None] * 8 + i[None, :]
    x0 = tl.load(w_ptr + lo, mask=ok[:, None], other=0.0)
    x1 = tl.load(w_ptr + lo + 4, mask=ok[:, None], other=0.0)
    k0 = tl.load(k_ptr + lo, mask=ok[:, None], other=0) != 0
    k1 = tl.load(k_ptr + lo + 4, mask=ok[:, None], other=0) != 0
    a0, a1, ai0, ai1, ac = _pick(x0, k0, i)
    b0, b1, bi0, bi1, bc = _pick(x1, k1, i)
    tl.store(v_ptr + p * 4, a0, mask=ok)
    tl.store(v_ptr + p * 4 + 1, a1, mask=ok)
    tl.store(v_ptr + p * 4 + 2, b0, mask=ok)
    tl.store(v_ptr + p * 4 + 3, b1, mask=ok)
    byte = (ai0 | (ai1 << 2)) | ((bi0 | (bi1 << 2)) << 4)
    tl.store(meta_ptr + p, byte.to(tl.uint8), mask=ok)
    bad = ((ac != 2) | (bc != 2)) & ok
    tl.atomic_add(bad_ptr, tl.sum(bad.to(tl.int32), axis=0))
