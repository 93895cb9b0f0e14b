"""Layer 3: hypothesis properties of the reference quantizer over random shapes, axes,
block sizes, formats and scales.  Hypothesis draws the parameters; torch draws the data
from a seed hypothesis picks, so every failure is reproducible."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec import formats as F
from lowprec.reference import dequantize, quantize
from lowprec.blocking import make_layout, to_blocks, to_stored

FORMATS = [F.MXFP4, F.NVFP4, F.UE5M3_FP4, F.MXFP8, F.MXFP6_E2M3, F.MXFP6_E3M2,
           F.MXFP4.replace(scale_rule="rceil"), F.MXFP4.replace(scale_rule="even"),
           F.MXFP4.replace(scale_rule="ceil"), F.NVFP4.replace(scale_rounding="up"),
           F.NVFP4.replace(tensor_scale=False), F.QuantFormat(F.E2M1, F.FP32_SCALE, 32, scale_rule="amax")]


@st.composite
def cases(draw, allow_2d=True):
    fmt = draw(st.sampled_from(FORMATS))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 70), min_size=ndim, max_size=ndim)))
    bs = draw(st.sampled_from([8, 16, 32, 64, 128, 24]))
    two_d = allow_2d and ndim >= 2 and draw(st.booleans())
    axis = -1 if two_d else draw(st.integers(-ndim, ndim - 1))
    fmt = fmt.replace(block_size=bs, axis=axis, block_2d=two_d)
    seed = draw(st.integers(0, 2 ** 31))
    log2_range = draw(st.integers(0, 12))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-log2_range, log2_range + 1, shape, generator=g).float())
    return fmt, x, seed


def scale_per_element(q, x):
    """Effective fp32 scale of each element, in x's layout, from the stored scales."""
    from lowprec.blocking import from_blocks, from_stored
    from lowprec.reference.scales import decode_scales
    layout = make_layout(x.shape, q.fmt)
    s = decode_scales(q.scales, q.fmt.scale)
    if q.tensor_scale is not None:
        s = s / q.tensor_scale
    blocks = to_blocks(to_stored(torch.zeros_like(x), layout), layout) + s.unsqueeze(-1)
    return from_stored(from_blocks(blocks, layout), layout)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_error_bounded_by_half_a_step(case):
    fmt, x, _ = case
    q = quantize(x, fmt)
    xh = dequantize(q)
    s = scale_per_element(q, x)
    e = fmt.element
    xs = torch.where(s == 0, torch.zeros_like(x), x / s)
    a = xs.abs().clamp(max=e.max)
    _, exp = torch.frexp(a)
    ulp = torch.exp2((torch.clamp(exp - 1, min=e.emin) - e.mbits).float())
    bound = 0.5 * ulp * s + (xs.abs() - e.max).clamp(min=0) * s     # saturation adds the clipped part
    bound = torch.where(s == 0, x.abs(), bound)                      # zero scale: everything flushed
    err = (x - xh).abs()
    assert (err <= bound * (1 + 1e-6) + 1e-30).all()


@settings(max_examples=150, deadline=None)
@given(cases())
def test_idempotent(case):
    """quantize(dequantize(quantize(x))) gives back the same values.

    Holds while every block scale is a normal number of its format (a subnormal scale can
    round the block max down a binade), with the tensor scale held fixed (S_enc is an fp32
    quotient of the amax, which the dequantized tensor reproduces only to an ulp), and for
    scales rounded to nearest: an upward-rounded scale can leave the block max at 4 or 5
    times the scale, and the next pass then picks a smaller scale.
    """
    fmt, x, _ = case
    if fmt.scale_rounding == "up":
        fmt = fmt.replace(scale_rounding="nearest")
    q = quantize(x, fmt)
    xh = dequantize(q)
    if fmt.scale.kind == "minifloat" and not bool(((q.scales.long() >> fmt.scale.mbits) > 0).all()):
        return
    q2 = quantize(xh, fmt, amax_tensor=x.abs().amax() if fmt.tensor_scale else None)
    assert torch.equal(dequantize(q2), xh)


@settings(max_examples=100, deadline=None)
@given(cases(allow_2d=False))
def test_monotone_within_a_block(case):
    fmt, x, _ = case
    xs, _ = torch.sort(x, dim=fmt.axis)
    y = dequantize(quantize(xs, fmt))
    layout = make_layout(xs.shape, fmt)
    yb = to_blocks(to_stored(y, layout), layout)
    n = xs.shape[fmt.axis]
    # compare neighbours inside each block, ignoring the zero padding after the last element
    valid = torch.arange(yb.shape[-2] * yb.shape[-1]).reshape(yb.shape[-2:]) < n
    pairs_ok = (yb[..., 1:] >= yb[..., :-1]) | ~(valid[:, 1:])
    assert pairs_ok.all()


@settings(max_examples=60, deadline=None)
@given(cases(), st.sampled_from(["nearest", "stochastic", "zero"]))
def test_shapes_padding_and_determinism(case, rounding):
    fmt, x, seed = case
    q = quantize(x, fmt, rounding=rounding, seed=seed, offset=3)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    q2 = quantize(x, fmt, rounding=rounding, seed=seed, offset=3)
    assert torch.equal(q.codes, q2.codes) and torch.equal(q.scales, q2.scales)
    if rounding == "zero":
        assert (y.abs() <= x.abs() * (1 + 1e-6)).all()


@settings(max_examples=40, deadline=None)
@given(cases(), st.integers(0, 2))
def test_non_finite_blocks_are_nan_and_contained(case, kind):
    fmt, x, seed = case
    if x.numel() < 2:
        return
    bad = [math.nan, math.inf, -math.inf][kind]
    flat = x.reshape(-1).clone()
    i = seed % flat.numel()
    flat[i] = bad
    x = flat.reshape(x.shape)
    y = dequantize(quantize(x, fmt))
    assert torch.isnan(y.reshape(-1)[i])
    layout = make_layout(x.shape, fmt)
    blocks_bad = to_blocks(to_stored(~torch.isfinite(x), layout), layout).any(-1, keepdim=True)
    yb = to_blocks(to_stored(y, layout), layout)
    xb_pad = to_blocks(to_stored(torch.ones_like(x, dtype=torch.bool), layout), layout)
    assert torch.isnan(yb[blocks_bad.expand_as(yb) & xb_pad]).all()
    if not fmt.tensor_scale:   # with a tensor scale, S_enc falls back to 1 and other blocks change
        assert torch.isfinite(yb[~blocks_bad.expand_as(yb) & xb_pad]).all()


@settings(max_examples=80, deadline=None)
@given(cases(), st.sampled_from(["nearest", "stochastic", "zero"]), st.integers(0, 3))
def test_fake_quantize_equals_quantize_dequantize(case, rounding, nan_kind):
    """The value-domain fast path is bit-exact with codes + dequantize, NaN/Inf included."""
    from lowprec.reference.fake import fake_quantize
    fmt, x, seed = case
    if nan_kind and x.numel() > 1:
        x = x.clone()
        x.view(-1)[seed % x.numel()] = [math.nan, math.inf, -math.inf][nan_kind - 1]
    a = fake_quantize(x, fmt, rounding, seed=seed, offset=seed % 1000)
    b = dequantize(quantize(x, fmt, rounding=rounding, seed=seed, offset=seed % 1000))
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.equal(a[~torch.isnan(a)], b[~torch.isnan(b)])
    assert torch.equal(torch.signbit(a), torch.signbit(b))


def test_format_dict_round_trip():
    import json
    for fmt in FORMATS + [F.NVFP4.replace(scale=F.ue5m3("ieee"), block_2d=True)]:
        assert F.QuantFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt
