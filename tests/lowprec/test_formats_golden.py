"""Layer 1: every code of every format, against literal golden values and ml_dtypes."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from lowprec import formats as F
from lowprec.reference.rounding import grid_to_code, round_to_grid

E2M1_GOLDEN = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]

ML_DTYPES = {"e2m1": ml_dtypes.float4_e2m1fn, "e2m3": ml_dtypes.float6_e2m3fn,
             "e3m2": ml_dtypes.float6_e3m2fn, "e4m3": ml_dtypes.float8_e4m3fn,
             "e5m2": ml_dtypes.float8_e5m2}
ELEMENTS = [F.E2M1, F.E2M3, F.E3M2, F.E4M3, F.E5M2]


def ml_decode(dtype, codes):
    return np.array(codes, dtype=np.uint8).view(dtype).astype(np.float32)


def same(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        np.nan_to_num(a, nan=7.0), np.nan_to_num(b, nan=7.0)) and np.array_equal(
        np.signbit(a[~np.isnan(a)]), np.signbit(b[~np.isnan(b)]))  # the sign of zero counts, NaN's does not


def test_e2m1_golden_table():
    assert same(F.E2M1.table().numpy(), E2M1_GOLDEN)


@pytest.mark.parametrize("fmt", ELEMENTS, ids=lambda f: f.name)
def test_element_table_matches_ml_dtypes(fmt):
    codes = list(range(1 << fmt.bits))
    assert same(F.element_format(fmt.name).table().numpy(), ml_decode(ML_DTYPES[fmt.name], codes))


@pytest.mark.parametrize("fmt,max_,min_normal,min_sub", [
    (F.E2M1, 6, 1, 0.5), (F.E2M3, 7.5, 1, 0.125), (F.E3M2, 28, 0.25, 0.0625),
    (F.E4M3, 448, 2 ** -6, 2 ** -9), (F.E5M2, 57344, 2 ** -14, 2 ** -16)], ids=lambda v: str(v))
def test_element_anchors(fmt, max_, min_normal, min_sub):
    assert (fmt.max, fmt.min_normal, fmt.min_subnormal) == (max_, min_normal, min_sub)
    t = fmt.table()
    assert float(t[1]) == min_sub
    assert float(t[1 << fmt.mbits]) == min_normal


def test_special_codes():
    assert math.isnan(F.E4M3.code_value(0x7F)) and math.isnan(F.E4M3.code_value(0xFF))
    assert F.E4M3.code_value(0x7E) == 448
    assert F.E5M2.code_value(0x7C) == math.inf and F.E5M2.code_value(0xFC) == -math.inf
    assert math.isnan(F.E5M2.code_value(0x7D))


def test_e8m0_all_codes():
    t = F.E8M0.table().numpy()
    for c in range(255):
        assert t[c] == math.ldexp(1.0, c - 127)
    assert math.isnan(t[255])
    assert same(t, ml_decode(ml_dtypes.float8_e8m0fnu, list(range(256))))


def test_ue4m3_all_codes():
    t = F.UE4M3.table().numpy()
    e4m3 = ml_decode(ml_dtypes.float8_e4m3fn, list(range(128)))
    assert same(t[:128], e4m3)
    assert t[0x7E] == 448 and t[0x01] == 2 ** -9 and t[0x38] == 1.0
    assert np.isnan(t[0x7F]) and np.isnan(t[0x80:]).all()     # bit 7 set: not a valid unsigned code


def _ue5m3_value(c):
    e, m = c >> 3, c & 7
    return (m / 8) * 2.0 ** -14 if e == 0 else (1 + m / 8) * 2.0 ** (e - 15)


def test_ue5m3_all_codes_default_convention():
    t = F.UE5M3.table().numpy()
    for c in range(255):
        assert t[c] == _ue5m3_value(c), c
    assert np.isnan(t[0xFF])
    assert F.UE5M3.max == 114688 and t[0xFE] == 114688 and F.UE5M3.min == 2.0 ** -17


def test_ue5m3_other_conventions():
    allf = F.ue5m3("all_finite")
    assert allf.max == 122880 and not np.isnan(allf.table().numpy()).any()
    ieee = F.ue5m3("ieee")
    assert ieee.max == 61440 and np.isnan(ieee.table().numpy()[0xF8:]).all()
    with pytest.raises(ValueError, match="convention"):
        F.ue5m3("bogus")


# Encoding golden values: ties to even and saturation on the E2M1 grid.
E2M1_ENCODE = [(0.25, 0.0), (0.26, 0.5), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0),
               (3.5, 4.0), (5.0, 4.0), (5.01, 6.0), (6.0, 6.0), (6.5, 6.0), (7.0, 6.0),
               (1e30, 6.0), (math.inf, 6.0), (-2.5, -2.0), (-5.0, -4.0), (-9.0, -6.0), (0.0, 0.0)]


@pytest.mark.parametrize("x,expected", E2M1_ENCODE)
def test_e2m1_nearest_golden(x, expected):
    v = round_to_grid(torch.tensor([x]), 2, 1, 1, 6.0, "nearest")
    assert float(v) == expected
    code = int(grid_to_code(v, 2, 1, 1))
    assert F.E2M1.code_value(code) == expected


@pytest.mark.parametrize("x,expected", [(0.49, 0.0), (0.99, 0.5), (2.9, 2.0), (5.9, 4.0), (7.9, 6.0), (-1.4, -1.0)])
def test_e2m1_zero_rounding_golden(x, expected):
    assert float(round_to_grid(torch.tensor([x]), 2, 1, 1, 6.0, "zero")) == expected


@pytest.mark.parametrize("fmt", ELEMENTS, ids=lambda f: f.name)
def test_nearest_matches_ml_dtypes_in_range(fmt):
    """Round-to-nearest-even of in-range fp32 values equals ml_dtypes' cast, code for code."""
    g = torch.Generator().manual_seed(0)
    mags = torch.exp2(torch.empty(20000).uniform_(math.log2(fmt.min_subnormal) - 2, math.log2(fmt.max), generator=g))
    x = torch.cat([mags * torch.sign(torch.randn(20000, generator=g)),
                   torch.tensor(fmt.positive_grid()),                       # exact grid points
                   torch.tensor(_midpoints(fmt))])                          # every tie
    x = x[x.abs() <= fmt.max]
    v = round_to_grid(x, fmt.ebits, fmt.mbits, fmt.bias, fmt.max, "nearest")
    ours = grid_to_code(v, fmt.ebits, fmt.mbits, fmt.bias).numpy().astype(np.uint8)
    theirs = x.numpy().astype(ML_DTYPES[fmt.name]).view(np.uint8)
    mism = ours != theirs
    assert not mism.any(), (x.numpy()[mism][:5], ours[mism][:5], theirs[mism][:5])


def _midpoints(fmt):
    g = fmt.positive_grid()
    mids = [(a + b) / 2 for a, b in zip(g[:-1], g[1:])]
    return mids + [-m for m in mids]


@pytest.mark.parametrize("fmt", ELEMENTS, ids=lambda f: f.name)
def test_code_round_trip_every_code(fmt):
    vals = fmt.table()
    finite = torch.isfinite(vals)
    codes = torch.arange(1 << fmt.bits)[finite]
    back = grid_to_code(vals[finite], fmt.ebits, fmt.mbits, fmt.bias)
    assert torch.equal(back.to(torch.int64), codes)


def test_preset_definitions():
    assert F.get_format("mxfp4") is F.MXFP4
    assert (F.MXFP4.element, F.MXFP4.scale, F.MXFP4.block_size, F.MXFP4.scale_rule, F.MXFP4.tensor_scale) == \
        (F.E2M1, F.E8M0, 32, "floor", False)
    assert (F.NVFP4.element, F.NVFP4.scale, F.NVFP4.block_size, F.NVFP4.tensor_scale) == (F.E2M1, F.UE4M3, 16, True)
    assert F.get_format("UE5M3").scale is F.UE5M3
    assert F.MXFP4.bits_per_element == 4.25 and F.NVFP4.bits_per_element == 4.5


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_size=7), "block_size"), (dict(block_size=256), "block_size"), (dict(block_size=4), "block_size"),
    (dict(scale_rule="amax"), "e8m0"), (dict(scale="ue4m3", scale_rule="floor"), "amax"),
    (dict(scale_rounding="down"), "scale_rounding"), (dict(element="e9m9"), "unknown element"),
    (dict(scale="e9m0"), "unknown scale"), (dict(block_2d=True, axis=0), "2D")])
def test_bad_formats_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.QuantFormat(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown format"):
        F.get_format("fp3")
