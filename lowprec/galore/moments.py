"""Adam moments of the projected gradient, read and written in their stored format: the
op ``galore_adam_moments``.

Every backend computes, element by element in fp32 and in this order (no fused
multiply-add), with the scalars rounded to fp32 once on the host (``MomentScalars``):

    m   = decode(M)                    stored code value × (block scale / tensor scale)
    v   = s · s,  s = decode(S)        low-bit state stores S = sqrt(V); fp32 state stores V
    m'  = m · β1 + r · c1              c1 = 1 − β1
    v'  = v · β2 + (r · r) · c2        c2 = 1 − β2
    N   = (m' · ibc1) / (sqrt_rn(v' · ibc2) + ε)          ibc_i = 1 / (1 − β_i^t)
    M ← Q(m'),  S ← Q(sqrt_rn(v'))

Q is lowprec's block quantizer in the state format (``state.state_format``: 1-D blocks along
the last dim, zero-padded; the tensor scale, where the format has one, from the amax of
the new moment), with stochastic rounding: element (i, j) of M' takes byte i·cols + j of
the Philox stream (seed, offset), S' the stream (seed, offset + padded numel).  fp32 state
updates M and V in place.  N, the Adam direction, comes back in fp32 with r's shape; the
moments themselves never exist in fp32 outside the kernel's registers on the fast paths.
Backends: ``reference`` (here, through lowprec's reference quantizer), ``cpp``
(csrc/cpu/galore_moments.cpp) and ``triton`` (lowprec/triton/galore_moments.py), bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Tuple

import torch

from .. import ops
from .._backends.blocked import format_params
from ..reference.arith import f32, sqrt_rn
from ..reference.scales import tensor_encode_scale
from . import state as lowbit

OP = "galore_adam_moments"


@dataclass(frozen=True)
class MomentScalars:
    """fp32-rounded coefficients of one Adam step at step t (counted from 1)."""
    beta1: float
    beta2: float
    c1: float
    c2: float
    ibc1: float
    ibc2: float
    eps: float

    @classmethod
    def make(cls, step: int, betas, eps: float) -> "MomentScalars":
        return _scalars(int(step), float(betas[0]), float(betas[1]), float(eps))

    def as_list(self):
        return [self.beta1, self.beta2, self.c1, self.c2, self.ibc1, self.ibc2, self.eps]


@lru_cache(maxsize=256)
def _scalars(step: int, b1: float, b2: float, eps: float) -> MomentScalars:
    """Memoized: every parameter of a group shares the step's scalars."""
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    return MomentScalars(f32(b1), f32(b2), f32(1.0 - b1), f32(1.0 - b2), f32(1.0 / (1.0 - b1 ** step)),
                         f32(1.0 / (1.0 - b2 ** step)), f32(eps))


def _adam(m, v, r, s: MomentScalars):
    m2 = m * s.beta1 + r * s.c1
    v2 = v * s.beta2 + (r * r) * s.c2
    n = (m2 * s.ibc1) / (sqrt_rn(v2 * s.ibc2) + s.eps)
    return m2, v2, n


def zeros(shape, fmt_name: str, device=None) -> Tuple[dict, dict]:
    """Stored M and V (or S) of a first step: all zeros in the state format."""
    z = torch.zeros(shape, dtype=torch.float32, device=device)
    if fmt_name == "fp32":
        return {"value": z}, {"value": z.clone()}
    stored, _ = lowbit.store(z, fmt_name, rounding="nearest", backend="reference")
    return stored, {k: v.clone() for k, v in stored.items()}


@ops.register(OP, "reference")
def reference_moments(r, m_st, v_st, fmt_name, sc: MomentScalars, seed, offset):
    if fmt_name == "fp32":
        m, v = m_st["value"], v_st["value"]
        m2, v2, n = _adam(m, v, r, sc)
        m.copy_(m2)
        v.copy_(v2)
        return n, m_st, v_st
    m = lowbit.load(m_st, fmt_name, r.shape)
    v = lowbit.load(v_st, fmt_name, r.shape, sqrt=True)
    m2, v2, n = _adam(m, v, r, sc)
    m_new, used = lowbit.store(m2, fmt_name, seed, offset, backend="reference")
    s_new, _ = lowbit.store(sqrt_rn(v2), fmt_name, seed, offset + used, backend="reference")
    return n, m_new, s_new


@lru_cache(maxsize=None)
def _format_args(fmt_name: str, device: torch.device):
    fmt = lowbit.state_format(fmt_name)
    ints, floats = format_params(fmt)
    tables = (fmt.element.table(device).float().contiguous(), fmt.scale.table(device).float().contiguous())
    return fmt, ints, floats, tables


def _stored(codes, scales, ts):
    out = {"codes": codes, "scales": scales}
    if ts is not None:
        out["tensor_scale"] = ts
    return out


@ops.register(OP, "cpp")
def cpp_moments(r, m_st, v_st, fmt_name, sc: MomentScalars, seed, offset):
    if r.device.type != "cpu":
        raise ops.BackendUnavailable("backend 'cpp' galore_adam_moments takes CPU tensors")
    if fmt_name == "fp32":
        n = torch.ops.lowprec.galore_adam_fp32_(r, m_st["value"], v_st["value"], sc.as_list())
        return n, m_st, v_st
    fmt, ints, floats, (etab, stab) = _format_args(fmt_name, r.device)
    ts = [float(st["tensor_scale"]) if "tensor_scale" in st else 1.0 for st in (m_st, v_st)]
    used = lowbit.padded_numel(r.shape, fmt.block_size)
    n, mc, ms, scodes, ss, enc = torch.ops.lowprec.galore_adam_lowbit(
        r, m_st["codes"], m_st["scales"], v_st["codes"], v_st["scales"], etab, stab, ints, floats, sc.as_list(),
        fmt.block_size, 2, ts[0], ts[1], 1.0, 1.0, seed, offset, offset + used)
    t_m, t_s = (enc[0].clone(), enc[1].clone()) if fmt.tensor_scale else (None, None)
    return n, _stored(mc, ms, t_m), _stored(scodes, ss, t_s)


_FP32_BLOCK = 1024
_ROWS = 16


@ops.register(OP, "triton")
def triton_moments(r, m_st, v_st, fmt_name, sc: MomentScalars, seed, offset):
    import triton

    from ..triton.galore_moments import fp32_moments_kernel, lowbit_moments_kernel
    if fmt_name == "fp32":
        m, v = m_st["value"], v_st["value"]
        n = torch.empty_like(r)
        fp32_moments_kernel[(triton.cdiv(r.numel(), _FP32_BLOCK),)](r, m, v, n, r.numel(), *sc.as_list(),
                                                                     BLOCK=_FP32_BLOCK, enable_fp_fusion=False)
        return n, m_st, v_st
    fmt, ints, floats, (etab, stab) = _format_args(fmt_name, r.device)
    rows, cols = r.shape
    bs = fmt.block_size
    bpr = -(-cols // bs)
    n_blocks = rows * bpr
    used = lowbit.padded_numel(r.shape, bs)
    mc, ms, scodes, ss = (m_st["codes"], m_st["scales"], v_st["codes"], v_st["scales"])
    consts = dict(LDC=mc.shape[1], LDS=bpr, BS=bs, HALF=bs // 2, ROWS=_ROWS, PACKED=fmt.element.bits == 4,
                  E_EBITS=ints[0], E_MBITS=ints[1], E_BIAS=ints[2], E_MAX=floats[0], E_NAN=max(ints[3], 0),
                  E_EMAX=ints[4], S_KIND=ints[5], S_EBITS=ints[6], S_MBITS=ints[7], S_BIAS=ints[8], S_MAX=floats[1],
                  S_NAN=max(ints[9], 0), RULE=ints[10], S_ROUND=ints[11], TENSOR_SCALE=ints[12])
    grid = (triton.cdiv(n_blocks, _ROWS),)
    none = r.new_empty(0)
    one = torch.ones((), dtype=torch.float32, device=r.device)
    ts_in = [st.get("tensor_scale", one).float().reshape(()) for st in (m_st, v_st)]

    def launch(pass_, outs, amax, s_enc):
        scal = torch.stack(ts_in + list(s_enc))          # on the device: no host round trip
        lowbit_moments_kernel[grid](r, outs[0], mc, ms, scodes, ss, outs[1], outs[2], outs[3], outs[4], amax, etab, stab,
                                    cols, bpr, n_blocks, scal, *sc.as_list(), seed, offset, offset + used,
                                    PASS=pass_, enable_fp_fusion=False, **consts)

    t_m = t_s = None
    s_enc = (one, one)
    if fmt.tensor_scale:
        blocks = torch.empty(n_blocks, 2, dtype=torch.float32, device=r.device)
        launch(0, (none, none, none, none, none), blocks, s_enc)
        amax = blocks.amax(0)                                  # block amaxes over finite values
        t_m, t_s = tensor_encode_scale(amax[0], fmt), tensor_encode_scale(amax[1], fmt)
        s_enc = (t_m, t_s)
    outs = (torch.empty_like(r), torch.empty_like(mc), torch.empty_like(ms), torch.empty_like(scodes),
            torch.empty_like(ss))
    launch(1, outs, none, s_enc)
    n, omc, oms, osc, oss = outs
    return n, _stored(omc, oms, t_m), _stored(osc, oss, t_s)


def check_moments(r: torch.Tensor, m_st: dict, v_st: dict, fmt_name: str) -> None:
    """The stored moments must be those of a tensor of r's shape on r's device (kernels index
    them by r's geometry: anything else would be read or written out of bounds)."""
    for name, st in (("M", m_st), ("V", v_st)):
        if fmt_name == "fp32":
            v = st.get("value") if isinstance(st, dict) else None
            if not isinstance(v, torch.Tensor) or v.dtype != torch.float32 or v.shape != r.shape or v.device != r.device:
                raise ValueError(f"stored {name} must hold an fp32 'value' of shape {tuple(r.shape)} on {r.device}")
            continue
        if not isinstance(st, dict) or "codes" not in st or "scales" not in st:
            raise ValueError(f"stored {name} must be a dict with 'codes' and 'scales' (from moments.zeros)")
        q = lowbit.as_quantized(st, fmt_name, r.shape)   # QuantizedTensor checks the shapes and dtypes
        if q.device != r.device:
            raise ValueError(f"stored {name} is on {q.device}, the projected gradient on {r.device}")


def adam_moments(r: torch.Tensor, m_st: dict, v_st: dict, fmt_name: str, scalars: MomentScalars, seed: int = 0,
                 offset: int = 0, backend: str = "auto"):
    """One Adam moment update of the projected gradient ``r`` (2-D for low-bit state):
    -> (N fp32, new stored M, new stored V or S, Philox elements consumed)."""
    lowbit.check_state_format(fmt_name)
    if r.dtype != torch.float32:
        raise TypeError(f"the projected gradient must be fp32, got {r.dtype}")
    r = r.contiguous()
    if fmt_name != "fp32" and r.dim() != 2:
        raise ValueError(f"low-bit moments take a 2-D projected gradient, got shape {tuple(r.shape)}")
    check_moments(r, m_st, v_st, fmt_name)
    n, m_new, v_new = ops.resolve(OP, backend, r.device)(r, m_st, v_st, fmt_name, scalars, int(seed), int(offset))
    used = 0 if fmt_name == "fp32" else 2 * lowbit.padded_numel(r.shape, lowbit.state_format(fmt_name).block_size)
    return n, m_new, v_new, used


__all__ = ["MomentScalars", "adam_moments", "zeros"]
