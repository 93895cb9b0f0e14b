"""Reliability cases, run in a child process by test_reliability.py so that an input that
crashes a kernel (SIGFPE, SIGSEGV, SIGBUS, heap corruption) fails a test instead of killing
the test run.

    python reliability_worker.py GROUP [EXAMPLES]

GROUP is one of the names in GROUPS. Every case calls a public op on every backend present
and asserts that each backend either gives the reference's result bit for bit or raises the
reference's error (same type, same text). Before each case the worker prints what it is about
to run, so the parent can name the input a crash came from. Exit 0 when every case held.
"""

from __future__ import annotations

import math
import os
import sys
import traceback

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lowprec  # noqa: E402
from lowprec import formats as F  # noqa: E402
from lowprec import ops  # noqa: E402

BACKENDS = [b for b in ("reference", "cpp", "triton") if ops.backend_status(b)[0]]
FORMATS = [F.MXFP4, F.NVFP4, F.UE5M3_FP4, F.MXFP8, F.MXFP6_E2M3, F.MXFP4.replace(axis=0), F.NVFP4.replace(axis=0),
           F.NVFP4.replace(block_2d=True), F.MXFP4.replace(block_size=8), F.NVFP4.replace(division="reciprocal"),
           F.UE5M3_FP4.replace(scale=F.ue5m3("all_finite")), F.QuantFormat(F.E2M1, F.FP32_SCALE, 32, scale_rule="amax")]
SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 1e-45, 3e-39, -1e-40, 3e38, 1e-37]
GOOD_U64 = [0, 1, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
BAD_U64 = [-1, 1 << 64, 1.5, 0.5, True, "3", None]


def log(msg: str) -> None:
    print(msg, flush=True)


def outcome(fn):
    """('ok', value) or ('error', type name, message) of fn(); anything else propagates."""
    try:
        return ("ok", fn())
    except (TypeError, ValueError) as e:
        return ("error", type(e).__name__, str(e))
    except ops.BackendUnavailable as e:
        return ("unavailable", str(e))


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        na, nb = torch.isnan(a), torch.isnan(b)
        return torch.equal(na, nb) and torch.equal(a[~na], b[~nb]) and torch.equal(torch.signbit(a[~na]),
                                                                                    torch.signbit(b[~nb]))
    return torch.equal(a, b)


def same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and same_tensor(a, b)
    if isinstance(a, lowprec.QuantizedTensor):
        return (isinstance(b, lowprec.QuantizedTensor) and a.fmt == b.fmt and a.shape == b.shape and a.axis == b.axis
                and same_tensor(a.codes, b.codes) and same_tensor(a.scales, b.scales)
                and (a.tensor_scale is None) == (b.tensor_scale is None)
                and (a.tensor_scale is None or same_tensor(a.tensor_scale, b.tensor_scale)))
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def agree(what: str, call) -> None:
    """call(backend) on every backend must match the reference's outcome."""
    ref = outcome(lambda: call("reference"))
    assert ref[0] != "unavailable", (what, ref)
    for b in BACKENDS[1:]:
        got = outcome(lambda: call(b))
        if got[0] == "unavailable":
            # an explicitly named backend may lack an op or a device; 'auto' never may
            continue
        if ref[0] == "error":
            assert got[0] == "error" and got[1:] == ref[1:], (what, b, ref, got)
        else:
            assert got[0] == "ok", (what, b, ref[0], got)
            assert same_value(got[1], ref[1]), (what, b)
    auto = outcome(lambda: call("auto"))
    assert auto[0] != "unavailable", (what, "auto", auto)
    if ref[0] == "error":
        assert auto[0] == "error" and auto[1:] == ref[1:], (what, "auto", ref, auto)
    else:
        assert auto[0] == "ok" and same_value(auto[1], ref[1]), (what, "auto")


# -- strategies ---------------------------------------------------------------------------------

@st.composite
def tensors(draw, max_dims=3):
    """Tensors of every dtype, zero-size dims, non-contiguous / expanded views and special values."""
    ndim = draw(st.integers(1, max_dims))
    shape = [draw(st.sampled_from([0, 1, 2, 3, 5, 8, 16, 17, 32, 40])) for _ in range(ndim)]
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    scale = 2.0 ** draw(st.integers(-20, 20))
    x = torch.randn(shape, generator=g) * scale
    if x.numel() and draw(st.booleans()):
        flat = x.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    x = x.to(dtype)
    view = draw(st.sampled_from(["contiguous", "transpose", "step", "expand"]))
    if view == "transpose" and x.dim() >= 2:
        x = x.transpose(-1, -2)
    elif view == "step" and x.dim() >= 1 and x.shape[-1] >= 2:
        x = x[..., ::2]
    elif view == "expand" and x.dim() >= 1 and x.shape[-1] >= 1:
        x = x[..., :1].expand(*x.shape[:-1], draw(st.sampled_from([0, 16, 32])))
    return x


CHECK = settings(max_examples=int(os.environ.get("RELIABILITY_EXAMPLES", "40")), deadline=None, database=None,
                 derandomize=True, suppress_health_check=list(HealthCheck))


# -- groups ------------------------------------------------------------------------------------

def group_quantize(examples: int):
    @settings(CHECK, max_examples=examples)
    @given(tensors(), st.sampled_from(FORMATS), st.sampled_from(["nearest", "stochastic", "zero"]),
           st.sampled_from(GOOD_U64 * 4 + BAD_U64[:3]), st.sampled_from(GOOD_U64 * 4 + BAD_U64),
           st.sampled_from([False, False, False, True]), st.booleans())
    def case(x, fmt, rounding, seed, offset, strict, sr_clipping):
        what = (f"quantize shape={tuple(x.shape)} stride={x.stride()} dtype={x.dtype} fmt={fmt} {rounding} "
                f"seed={seed!r} offset={offset!r} strict={strict} sr_clipping={sr_clipping}")
        log(what)
        kw = dict(rounding=rounding, seed=seed, offset=offset, sr_clipping=sr_clipping)
        agree(what, lambda b: lowprec.quantize(x, fmt, strict=strict, backend=b, **kw))
        agree("fake_" + what, lambda b: lowprec.fake_quantize(x, fmt, backend=b, **kw))
        q = outcome(lambda: lowprec.quantize(x, fmt, strict=strict, backend="reference", **kw))
        if q[0] == "ok":
            for dtype in (None, torch.float32, torch.bfloat16, torch.int32):
                agree(f"dequantize({dtype}) of " + what, lambda b: lowprec.dequantize(q[1], dtype, backend=b))
                agree(f"q.dequantize({dtype}) of " + what, lambda b: q[1].dequantize(dtype, backend=b))
    case()


def group_hand_built(examples: int):
    """QuantizedTensors put together by hand: wrong shapes, dtypes, axes and code ranges are
    refused at construction; the ones accepted dequantize alike everywhere (never read out of bounds)."""
    @settings(CHECK, max_examples=examples)
    @given(st.sampled_from(FORMATS), st.sampled_from([(4, 64), (3, 40), (0, 32), (2, 16, 32)]),
           st.sampled_from(["ok", "codes_shape", "scales_shape", "codes_dtype", "scales_dtype", "axis", "no_ts",
                            "extra_ts", "big_codes", "shape"]),
           st.integers(0, 2 ** 16))
    def case(fmt, shape, defect, seed):
        g = torch.Generator().manual_seed(seed)
        try:
            ok = lowprec.quantize(torch.randn(shape, generator=g), fmt, backend="reference")
        except ValueError:
            return
        codes = torch.randint(0, 256, ok.codes.shape, generator=g, dtype=torch.int64).to(torch.uint8)
        if fmt.element.bits == 6:
            codes = codes & 63
        scales = ok.scales.clone()
        ts, axis, shp = ok.tensor_scale, ok.axis, ok.shape
        if defect == "codes_shape":
            codes = codes.reshape(-1)[: max(codes.numel() - 1, 0)]
        elif defect == "scales_shape":
            scales = scales.reshape(-1)[1:] if scales.numel() else torch.zeros(3, dtype=scales.dtype)
        elif defect == "codes_dtype":
            codes = codes.to(torch.int32)
        elif defect == "scales_dtype":
            scales = scales.to(torch.float64)
        elif defect == "axis":
            axis = 1.5 if seed % 2 else len(shp) + 1
        elif defect == "no_ts":
            ts = None
        elif defect == "extra_ts":
            ts = torch.tensor(1.0) if ts is None else torch.ones(2)
        elif defect == "big_codes":
            codes = codes | 0xC0
        elif defect == "shape":
            shp = torch.Size([shp[0] + 64, *shp[1:]])
        what = f"QuantizedTensor fmt={fmt} shape={tuple(shape)} defect={defect} seed={seed}"
        log(what)
        built = outcome(lambda: lowprec.QuantizedTensor(codes, scales, ts, fmt, shp, torch.float32, axis))
        valid = (defect == "ok" or (defect == "no_ts" and not fmt.tensor_scale)            # nothing changed
                 or (defect == "big_codes" and fmt.element.bits in (4, 8)))  # every byte is a 4- or 8-bit code (pair)
        assert built[0] == ("ok" if valid else "error"), (what, built)
        if built[0] == "ok":
            agree("dequantize " + what, lambda b: lowprec.dequantize(built[1], backend=b))
    case()


def group_hadamard(examples: int):
    @settings(CHECK, max_examples=examples)
    @given(tensors(), st.sampled_from([1, 2, 8, 16, 32, 24]), st.sampled_from([-3, -2, -1, 0, 1, 2, 1.5]),
           st.sampled_from([None, 0, 7, (1 << 64) - 1, -1, 1.5]), st.sampled_from(["none", "ok", "zero", "two"]),
           st.booleans())
    def case(x, n, axis, seed, signs_kind, inverse):
        signs = None
        if signs_kind != "none" and seed is None:
            signs = {"ok": torch.ones(n), "zero": torch.zeros(n), "two": torch.full((n,), 2.0)}[signs_kind]
        what = f"hadamard shape={tuple(x.shape)} dtype={x.dtype} n={n} axis={axis} seed={seed} signs={signs_kind}"
        log(what)
        agree(what, lambda b: lowprec.hadamard(x, n, axis=axis, seed=seed, signs=signs, inverse=inverse, backend=b))
        ref = outcome(lambda: lowprec.hadamard(x, n, axis=axis, seed=seed, signs=signs, inverse=inverse,
                                               backend="reference"))
        in_range = isinstance(axis, int) and -x.dim() <= axis < x.dim()
        if not in_range:
            assert ref[0] == "error", (what, "an axis out of range must raise")
        elif ref[0] == "ok":
            # dense oracle in fp64: chunks along the axis times M^T, M = H diag(s) (inverse: M^T)
            from lowprec.reference.hadamard import random_signs, sylvester
            s = (random_signs(seed, n, dtype=torch.float64) if seed is not None
                 else (signs.double() if signs is not None else torch.ones(n, dtype=torch.float64)))
            m = sylvester(n) @ torch.diag(s)
            m = m.T if inverse else m
            xm = x.double().movedim(axis, -1)
            dense = (xm.reshape(*xm.shape[:-1], xm.shape[-1] // n, n) @ m.T).reshape(xm.shape).movedim(-1, axis)
            tol = 1e-2 if x.dtype != torch.float32 else 1e-5
            fin = torch.isfinite(dense)
            got = ref[1].double()
            assert torch.allclose(got[fin], dense[fin], rtol=tol, atol=tol * (1 + float(dense[fin].abs().max())
                                                                              if fin.any() else 1)), what
    case()


def group_sparsity(examples: int):
    @settings(CHECK, max_examples=examples)
    @given(tensors(max_dims=2), st.sampled_from([(2, 4), (1, 4), (2, 8), (4, 4), (0, 4), (3, 2)]))
    def case(x, nm):
        n, m = nm
        what = f"nm_mask shape={tuple(x.shape)} dtype={x.dtype} n={n} m={m}"
        log(what)
        agree(what, lambda b: lowprec.nm_mask(x, n, m, backend=b))
        mask = outcome(lambda: lowprec.nm_mask(x, 2, 4, backend="reference"))
        if mask[0] == "ok":
            agree("compress_24 " + what, lambda b: lowprec.compress_24(x, mask[1], backend=b))
            if x.numel():
                bad = mask[1].contiguous().clone()
                bad.view(-1)[:4] = True              # one group keeps 4 of 4
                agree("compress_24 bad mask " + what, lambda b: lowprec.compress_24(x, bad, backend=b))
    case()


def group_random_bytes(examples: int):
    @settings(CHECK, max_examples=examples)
    @given(st.sampled_from(GOOD_U64 + BAD_U64[:4]), st.sampled_from(GOOD_U64 + BAD_U64[:4]),
           st.sampled_from([0, 1, 15, 16, 17, 100, -1]))
    def case(seed, offset, numel):
        what = f"random_bytes seed={seed!r} offset={offset!r} numel={numel}"
        log(what)
        agree(what, lambda b: lowprec.random_bytes(seed, offset, numel, backend=b))
    case()


def group_galore(examples: int):
    """The fused GaLore kernels index their operands by the gradient's geometry: mismatched
    moments must be refused before any kernel runs, transposed weights updated in place correctly."""
    from lowprec.galore import moments
    from types import SimpleNamespace

    from lowprec.galore.fused import galore_update_
    gal_backends = [b for b in BACKENDS if b in ops.implementations("galore_adam_moments")]
    sc = moments.MomentScalars.make(1, (0.9, 0.999), 1e-8)
    for fmt in ("fp32", "mxfp8", "nvfp4"):
        for r_shape, m_shape in (((8, 64), (8, 64)), ((8, 64), (4, 64)), ((8, 64), (8, 32)), ((8, 64), (64, 8))):
            for b in gal_backends:
                what = f"galore moments {fmt} r={r_shape} m={m_shape} backend={b}"
                log(what)
                r = torch.randn(r_shape)
                m_st, v_st = moments.zeros(m_shape, fmt)
                res = outcome(lambda: moments.adam_moments(r, m_st, v_st, fmt, sc, backend=b))
                if r_shape == m_shape:
                    assert res[0] == "ok", (what, res)
                else:
                    assert res[0] == "error" and res[1] == "ValueError", (what, res)
    for b in [b for b in BACKENDS if b in ops.implementations("galore_update_")]:
        what = f"galore_update_ transposed weight backend={b}"
        log(what)
        w = torch.randn(32, 48).t()                      # (48, 32), non-contiguous
        ref = w.clone()
        proj = SimpleNamespace(identity=False, side="left", p=torch.linalg.qr(torch.randn(48, 8))[0], p_right=None)
        n = torch.randn(8, 32)
        galore_update_(ref, proj, n, 0.1, 0.99, backend="reference")
        galore_update_(w, proj, n, 0.1, 0.99, backend=b)
        assert torch.allclose(w, ref, rtol=1e-6, atol=1e-6), what
        bad = outcome(lambda: galore_update_(w, proj, torch.randn(8, 31), 0.1, 0.99, backend=b))
        assert bad[0] == "error" and bad[1] == "ValueError", (what, bad)


GROUPS = {"quantize": group_quantize, "hand_built": group_hand_built, "hadamard": group_hadamard,
          "sparsity": group_sparsity, "random_bytes": group_random_bytes, "galore": group_galore}


def main(argv) -> int:
    group = argv[1]
    examples = int(argv[2]) if len(argv) > 2 else 40
    log(f"backends: {BACKENDS}")
    try:
        GROUPS[group](examples)
    except Exception:
        traceback.print_exc()
        return 1
    log("ALL CASES HELD")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
