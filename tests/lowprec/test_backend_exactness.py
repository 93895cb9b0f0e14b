"""Layer 2: every fast backend present, bit for bit against the reference (rtol=0, atol=0),
over every format, scale rule, block shape, rounding mode, odd shapes and NaN/Inf."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowprec
from lowprec import formats as F
from lowprec import ops
from lowprec.reference import dequantize as ref_dequantize
from lowprec.reference import quantize as ref_quantize
from lowprec.reference.fake import fake_quantize_with_scales as ref_fake

FAST_CPU = [b for b in ("cpp", "triton") if ops.backend_status(b)[0] and b in ops.implementations("quantize")]

FORMATS = [F.MXFP4, F.NVFP4, F.UE5M3_FP4, F.MXFP8, F.MXFP6_E2M3, F.MXFP6_E3M2, F.MXFP4.replace(scale="e8m0"),
           F.MXFP4.replace(scale_rule="ceil"), F.MXFP4.replace(scale_rule="even"), F.MXFP4.replace(scale_rule="rceil"),
           F.NVFP4.replace(scale_rounding="up"), F.NVFP4.replace(block_2d=True), F.NVFP4.replace(tensor_scale=False),
           F.UE5M3_FP4.replace(scale=F.ue5m3("ieee")), F.UE5M3_FP4.replace(scale=F.ue5m3("all_finite")),
           F.QuantFormat(F.E2M1, F.FP32_SCALE, 32, scale_rule="amax"), F.QuantFormat(F.E5M2, F.E8M0, 32),
           F.QuantFormat(F.E4M3, F.UE4M3, 64, tensor_scale=True, scale_rule="amax"),
           F.NVFP4.replace(division="reciprocal"), F.NVFP4.replace(division="reciprocal", block_2d=True),
           F.UE5M3_FP4.replace(division="reciprocal", scale_rounding="up"),
           F.NVFP4.replace(division="reciprocal", tensor_scale=False),
           F.QuantFormat(F.E2M1, F.FP32_SCALE, 32, scale_rule="amax", division="reciprocal"),
           F.MXFP4.replace(division="reciprocal")]


def equal_nan(a, b):
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[~torch.isnan(a)], b[~torch.isnan(b)]) \
        and torch.equal(torch.signbit(a), torch.signbit(b))


def assert_same_q(q, r):
    assert torch.equal(q.codes, r.codes)
    assert equal_nan(q.scales.float(), r.scales.float()) if q.scales.dtype == torch.float32 else torch.equal(q.scales, r.scales)
    assert (q.tensor_scale is None) == (r.tensor_scale is None)
    if q.tensor_scale is not None:
        assert torch.equal(q.tensor_scale, r.tensor_scale)
    assert q.shape == r.shape and q.axis == r.axis and q.fmt == r.fmt


@pytest.fixture(params=FAST_CPU or [pytest.param(None, marks=pytest.mark.skip(reason="no fast CPU backend is built"))])
def backend(request):
    return request.param


def data(shape, seed, spread=8, specials=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-spread, spread + 1, shape, generator=g).float())
    if specials and x.numel() > 4:
        flat = x.view(-1)
        flat[0], flat[-1] = math.nan, math.inf
        flat[x.numel() // 2] = -math.inf
        flat[1] = -0.0
    return x


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "zero"])
def test_quantize_bit_exact(backend, fmt, rounding):
    for shape, axis in (((64, 128), -1), ((5, 37), -1), ((48, 20), 0), ((3, 70, 9), 1)):
        f = fmt if fmt.block_2d else fmt.replace(axis=axis)
        x = data(shape, len(shape) + shape[0])
        q = lowprec.quantize(x, f, rounding=rounding, seed=11, offset=(1 << 33) + 5, backend=backend)
        r = ref_quantize(x, f, rounding=rounding, seed=11, offset=(1 << 33) + 5)
        assert_same_q(q, r)
        assert equal_nan(lowprec.dequantize(q, backend=backend), ref_dequantize(r))


@pytest.mark.parametrize("fmt", [F.MXFP4, F.NVFP4, F.UE5M3_FP4, F.MXFP8, F.NVFP4.replace(block_2d=True)], ids=str)
def test_nan_inf_inputs_bit_exact(backend, fmt):
    x = data((32, 64), 3, specials=True)
    for rounding in ("nearest", "stochastic"):
        assert_same_q(lowprec.quantize(x, fmt, rounding=rounding, seed=1, backend=backend),
                      ref_quantize(x, fmt, rounding=rounding, seed=1))
        got = ops.resolve("fake_quantize", backend)(x, fmt, rounding=rounding, seed=1)
        want = ref_fake(x, fmt, rounding=rounding, seed=1)
        for a, b in zip(got, want):
            assert equal_nan(a, b)


def special_blocks(rows=2, cols=512, block=32, seed=0):
    """Wide rows (16+ blocks per kernel panel, so block scales go 16 at a time) whose blocks are
    by turns ordinary, all zero, fp32-subnormal, near the fp32 max, or hold a NaN or an Inf."""
    x = data((rows, cols), seed)
    blocks = x.view(rows, cols // block, block)
    blocks[:, 1::7] = 0.0
    blocks[:, 2::7] *= 1e-41
    blocks[:, 3::7] = blocks[:, 3::7].sign() * 3e38
    blocks[:, 4::7] *= 1e-30
    blocks[0, 5, 3] = math.nan
    blocks[1, 6, 0] = -math.inf
    return x


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_special_blocks_in_wide_panels_bit_exact(backend, fmt):
    x = special_blocks()
    for axis in (-1, 0):
        f = fmt if fmt.block_2d else fmt.replace(axis=axis)
        if f.scale.kind not in ("e8m0", "fp32") and not f.scale.has_nan:   # NaN blocks cannot be stored
            for fn in (ref_quantize, lambda *a, **k: lowprec.quantize(*a, backend=backend, **k)):
                with pytest.raises(ValueError, match="no NaN code"):
                    fn(x, f, rounding="nearest")
            continue
        for rounding in ("nearest", "stochastic"):
            assert_same_q(lowprec.quantize(x, f, rounding=rounding, seed=3, offset=1, backend=backend),
                          ref_quantize(x, f, rounding=rounding, seed=3, offset=1))
            got = ops.resolve("fake_quantize", backend)(x, f, rounding=rounding, seed=3, offset=1)
            for a, b in zip(got, ref_fake(x, f, rounding=rounding, seed=3, offset=1)):
                assert equal_nan(a, b), (f, axis, rounding)


@pytest.mark.parametrize("fmt", [F.MXFP4, F.NVFP4, F.MXFP8, F.NVFP4.replace(block_2d=True)], ids=str)
def test_transposed_inputs_bit_exact(backend, fmt):
    """A transposed 2D view (wgrad operands, weights along axis 0) quantizes like its copy."""
    x = data((50, 36), 9, specials=True).t()
    for axis in (-1, 0):
        f = fmt if fmt.block_2d else fmt.replace(axis=axis)
        for rounding in ("nearest", "stochastic"):
            assert_same_q(lowprec.quantize(x, f, rounding=rounding, seed=4, offset=9, backend=backend),
                          ref_quantize(x, f, rounding=rounding, seed=4, offset=9))
            got = ops.resolve("fake_quantize", backend)(x, f, rounding=rounding, seed=4, offset=9)
            for a, b in zip(got, ref_fake(x, f, rounding=rounding, seed=4, offset=9)):
                assert equal_nan(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", [F.NVFP4, F.MXFP4.replace(axis=0), F.MXFP8], ids=str)
def test_low_precision_inputs(backend, dtype, fmt):
    """bf16/fp16 in (widened in the kernel on Triton), and back out in that dtype (the fp32
    product rounded to nearest even as it is stored), with a ragged block count."""
    x = data((48, 96), 5, specials=True).to(dtype)
    for rounding in ("nearest", "stochastic"):
        q = lowprec.quantize(x, fmt, rounding=rounding, seed=3, backend=backend)
        r = ref_quantize(x, fmt, rounding=rounding, seed=3)
        assert_same_q(q, r)
        for out_dtype in (None, torch.float32):
            a = lowprec.dequantize(q, out_dtype, backend=backend)
            b = ref_dequantize(r, out_dtype)
            assert a.dtype == b.dtype == (out_dtype or dtype) and same_values(a, b)
        assert same_values(lowprec.fake_quantize(x, fmt, rounding=rounding, seed=3, backend=backend),
                           lowprec.fake_quantize(x, fmt, rounding=rounding, seed=3, backend="reference"))


def same_values(a, b):
    """Bit-equal, except that a NaN's sign and payload in bf16/fp16 are the cast's choice (torch's
    CPU cast turns fp32 NaNs with different payloads into 0x7FC0 or 0xFFFF)."""
    if a.dtype == torch.float32:
        return equal_nan(a, b)
    nan = torch.isnan(b)
    return a.dtype == b.dtype and torch.equal(torch.isnan(a), nan) and equal_nan(a[~nan].float(), b[~nan].float())


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FORMATS), st.integers(1, 3), st.integers(0, 10_000), st.sampled_from([8, 16, 32, 64, 128]),
       st.sampled_from(["nearest", "stochastic", "zero"]))
def test_fake_quantize_bit_exact_random_shapes(fmt, ndim, seed, bs, rounding):
    for backend_name in FAST_CPU:
        g = torch.Generator().manual_seed(seed)
        shape = tuple(int(v) for v in torch.randint(1, 40, (ndim,), generator=g))
        f = fmt.replace(block_size=bs) if not (fmt.block_2d and ndim < 2) else fmt.replace(block_2d=False, block_size=bs)
        if not f.block_2d:
            f = f.replace(axis=int(torch.randint(-ndim, ndim, (1,), generator=g)))
        x = data(shape, seed, spread=12)
        got = ops.resolve("fake_quantize", backend_name)(x, f, rounding=rounding, seed=seed, offset=seed * 7)
        want = ref_fake(x, f, rounding=rounding, seed=seed, offset=seed * 7)
        for a, b in zip(got, want):
            assert equal_nan(a, b), (backend_name, f, shape)


def test_converted_module_identical_on_reference_and_fast_backend(backend):
    """ue5m3: Hadamard on all three GEMMs, stochastic rounding on gradients, tensor scales."""
    results = []
    for b in ("reference", backend):
        torch.manual_seed(0)
        lin = torch.nn.Linear(64, 64)
        m = lowprec.convert_model(torch.nn.Sequential(lin), lowprec.recipes.get("ue5m3", backend=b), seed=2)
        x = data((32, 64), 4)
        c = data((32, 64), 5)
        y = m(x)
        (y * c).sum().backward()
        results.append((y.detach(), lin.weight.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_opcheck_cpp_ops():
    if "cpp" not in FAST_CPU:
        pytest.skip("lowprec._C is not built")
    from lowprec._backends.blocked import format_params
    x = data((2, 24, 32), 1)
    for fmt in (F.NVFP4, F.MXFP4, F.MXFP8, F.QuantFormat(F.E2M1, F.FP32_SCALE, 32, scale_rule="amax")):
        ints, floats = format_params(fmt)
        table = fmt.scale.table() if fmt.scale.kind != "fp32" else torch.zeros(1)
        packed = fmt.element.bits == 4
        for mode, bs in ((0, 16), (1, 8), (2, 8)):
            for amax in (None, torch.tensor(3.0)):
                args = (x, table, ints, floats, [mode, bs], amax, 1, 5, 7)
                torch.library.opcheck(torch.ops.lowprec.quantize_panels.default, args + (packed,))
                torch.library.opcheck(torch.ops.lowprec.fake_quantize_panels.default, args + (True,))
                torch.library.opcheck(torch.ops.lowprec.fake_quantize_panels.default, args + (False,))
            if mode != 1:
                codes, scales, s_enc = torch.ops.lowprec.quantize_panels(*args, packed)
                deq = (codes, scales, table, fmt.element.table(), s_enc, [2, 24, 32, mode, bs], packed)
                torch.library.opcheck(torch.ops.lowprec.dequantize_panels.default, deq)
    from lowprec._backends.panels import MS_EDEN_ROUNDING         # MS-EDEN in the same kernels
    ints, floats = format_params(F.NVFP4)
    for mode, bs in ((0, 16), (1, 16), (2, 16)):
        args = (x, F.NVFP4.scale.table(), ints, floats, [mode, bs], None, MS_EDEN_ROUNDING, 5, 7)
        torch.library.opcheck(torch.ops.lowprec.quantize_panels.default, args + (True,))
        torch.library.opcheck(torch.ops.lowprec.fake_quantize_panels.default, args + (True,))
    ints, floats = format_params(F.MXFP4)
    with pytest.raises(RuntimeError, match="MS-EDEN takes E2M1 elements with minifloat amax scales"):
        torch.ops.lowprec.quantize_panels(x, F.MXFP4.scale.table(), ints, floats, [0, 32], None, MS_EDEN_ROUNDING,
                                          5, 7, True)
    torch.library.opcheck(torch.ops.lowprec.random_bytes.default, (1, 2, 100, torch.device("cpu")))
    signs = 1.0 - 2.0 * (torch.arange(16) % 3 == 0).float()
    for mode in (0, 1):
        for s in (None, signs):
            torch.library.opcheck(torch.ops.lowprec.hadamard_panels.default, (data((2, 32, 48), 2), 16, s, False, mode))
