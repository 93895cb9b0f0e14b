"""GaLore's fused projected update in Triton: W ← c_wd · W − coef · (A @ B).

Each program owns a BM × BN tile of W: it accumulates A[rows, :] @ B[:, cols] in fp32
registers over K and applies the update in the epilogue, so the full-rank update is never
written to memory.  ``launch_update_q`` reads a microscaled operand directly: element
codes (E2M1 packed two per byte, even index low; or one byte per code), block scale codes
decoded through the format's table, divided by the tensor scale (read from device memory,
so a launch never waits on the GPU); blocks of BS along the operand's last dim.  One kernel
serves both: ``QUANT`` says which operand, if any, is coded.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _decode(codes_ptr, scodes_ptr, etab_ptr, stab_ptr, inv_ts, r, c, ok, LDC: tl.constexpr, LDS: tl.constexpr,
            PACKED: tl.constexpr, BS: tl.constexpr):
    """Dequantized X[r, c] of a microscaled operand (blocks of BS along its last dim)."""
    if PACKED:
        byte = tl.load(codes_ptr + r * LDC + c // 2, mask=ok, other=0).to(tl.int32)
        code = (byte >> ((c % 2) * 4)) & 0xF
    else:
        code = tl.load(codes_ptr + r * LDC + c, mask=ok, other=0).to(tl.int32)
    sc = tl.load(scodes_ptr + r * LDS + c // BS, mask=ok, other=0).to(tl.int32)
    val = tl.load(etab_ptr + code, mask=ok, other=0.0) * (tl.load(stab_ptr + sc, mask=ok, other=0.0) * inv_ts)
    return tl.where(ok, val, 0.0)


@triton.jit
def _update_kernel(w_ptr, a_ptr, b_ptr, codes_ptr, scodes_ptr, etab_ptr, stab_ptr, ts_ptr, M, N, K, coef, c_wd,
                   LDC: tl.constexpr, LDS: tl.constexpr, PACKED: tl.constexpr, BS: tl.constexpr,
                   QUANT: tl.constexpr, TRANS_Q: tl.constexpr, OVERWRITE: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """QUANT 0: A and B fp32; 1: A is microscaled (codes_ptr...); 2: B is microscaled.
    TRANS_Q: the microscaled operand is the transpose of the stored matrix X (A = X^T or
    B = X^T).  OVERWRITE: W ← A @ B (the projection R), else W ← c_wd · W − coef · (A @ B)."""
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    inv_ts = 1.0
    if QUANT != 0:
        inv_ts = 1.0 / tl.load(ts_ptr)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a_ok = (rm[:, None] < M) & (rk[None, :] < K)
        b_ok = (rk[:, None] < K) & (rn[None, :] < N)
        # (row, col) of the stored matrix X for each operand element
        if TRANS_Q:
            a_r, a_c, b_r, b_c = rk[None, :], rm[:, None], rn[None, :], rk[:, None]
        else:
            a_r, a_c, b_r, b_c = rm[:, None], rk[None, :], rk[:, None], rn[None, :]
        if QUANT == 1:
            a = _decode(codes_ptr, scodes_ptr, etab_ptr, stab_ptr, inv_ts, a_r, a_c, a_ok, LDC, LDS, PACKED, BS)
        else:
            a = tl.load(a_ptr + rm[:, None] * K + rk[None, :], mask=a_ok, other=0.0)
        if QUANT == 2:
            b = _decode(codes_ptr, scodes_ptr, etab_ptr, stab_ptr, inv_ts, b_r, b_c, b_ok, LDC, LDS, PACKED, BS)
        else:
            b = tl.load(b_ptr + rk[:, None] * N + rn[None, :], mask=b_ok, other=0.0)
        acc += tl.dot(a, b, input_precision="ieee")
    ok = (rm[:, None] < M) & (rn[None, :] < N)
    wp = w_ptr + rm[:, None] * N + rn[None, :]
    if OVERWRITE:
        tl.store(wp, acc, mask=ok)
    else:
        w = tl.load(wp, mask=ok, other=0.0)
        tl.store(wp, w * c_wd - coef * acc, mask=ok)


def _blocks(m, n, k):
    bk = 16 if k <= 16 else 32
    return 32, 32, bk


def launch_update(w, a, b, coef, c_wd):
    m, n = w.shape
    k = a.shape[1]
    bm, bn, bk = _blocks(m, n, k)
    none = w.new_empty(0, dtype=torch.uint8)
    _update_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        w, a, b, none, none, w, w, w, m, n, k, float(coef), float(c_wd),
        LDC=1, LDS=1, PACKED=False, BS=1, QUANT=0, TRANS_Q=False, OVERWRITE=False, BM=bm, BN=bn, BK=bk)


def _q_operand(q, device):
    fmt = q.fmt
    if fmt.block_2d or q.axis not in (-1, len(q.shape) - 1) or fmt.scale.kind == "fp32":
        raise ValueError("the quantized operand needs 1-D blocks along its last dim and coded scales")
    codes = q.codes.contiguous()
    scodes = q.scales.to(torch.uint8).contiguous()
    etab = fmt.element.table(device).float().contiguous()
    stab = fmt.scale.table(device).float().contiguous()
    ts = (q.tensor_scale if q.tensor_scale is not None else torch.ones(())).float().reshape(1).to(device)
    return codes, scodes, etab, stab, ts, dict(LDC=codes.shape[-1], LDS=scodes.shape[-1], PACKED=q.packed,
                                                   BS=fmt.block_size)


def launch_update_q(w, a_or_b, q, q_is_a: bool, coef, c_wd):
    """W ← c_wd · W − coef · (A @ B) where ``q`` (a lowprec QuantizedTensor, 1-D blocks along
    its last dim) stands for A (``q_is_a``) or B, and ``a_or_b`` is the other, fp32 operand."""
    m, n = w.shape
    k = q.shape[1] if q_is_a else q.shape[0]
    codes, scodes, etab, stab, ts, qc = _q_operand(q, w.device)
    bm, bn, bk = _blocks(m, n, k)
    other = a_or_b.float().contiguous()
    _update_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        w, other if not q_is_a else w, other if q_is_a else w, codes, scodes, etab, stab, ts,
        m, n, k, float(coef), float(c_wd), QUANT=1 if q_is_a else 2, TRANS_Q=False, OVERWRITE=False,
        BM=bm, BN=bn, BK=bk, **qc)


def launch_project_q(g, q, side: str):
    """GaLore's projection with a microscaled projector P = ``q``, read from its codes:
    left R = P^T G (P: m × r), right R = G P^T (P: r × n)."""
    g = g.float().contiguous()
    gm, gn = g.shape
    codes, scodes, etab, stab, ts, qc = _q_operand(q, g.device)
    if side == "left":
        m, n, k = q.shape[1], gn, gm
        quant, a, b = 1, g, g
    elif side == "right":
        m, n, k = gm, q.shape[0], gn
        quant, a, b = 2, g, g
    else:
        raise ValueError(f"launch_project_q takes a left or right projector, got {side!r}")
    out = torch.empty(m, n, dtype=torch.float32, device=g.device)
    bm, bn, bk = _blocks(m, n, k)
    _update_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        out, a, b, codes, scodes, etab, stab, ts, m, n, k, 1.0, 0.0, QUANT=quant, TRANS_Q=True,
        OVERWRITE=True, BM=bm, BN=bn, BK=bk, **qc)
    return out
