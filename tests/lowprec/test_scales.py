"""Scale rules and two-level scaling against hand-computed values."""

import math

import pytest
import torch

from lowprec import formats as F
from lowprec.reference.scales import compute_scale_codes, decode_scales, tensor_encode_scale

ONE = torch.ones(())


def e8m0_exp(amax, rule, elem=F.E2M1):
    fmt = F.QuantFormat(elem, F.E8M0, 32, scale_rule=rule)
    code = compute_scale_codes(torch.tensor([amax], dtype=torch.float32), fmt, ONE)
    return int(code) - 127


@pytest.mark.parametrize("amax,floor,ceil,even,rceil", [
    (6.0, 0, 1, 0, 0),          # log2(6)=2.58: floor 2, ceil 3; 6 needs no rounding up
    (4.0, 0, 0, 0, 0),          # exact power of two (rceil: ceil(log2(4/6)) = 0)
    (4.1, 0, 1, 0, 0),
    (5.9, 0, 1, 0, 0),          # 5.9 rounds to 6 with one mantissa bit: same binade
    (7.0, 0, 1, 1, 1),          # 7 rounds to 8 with one mantissa bit: next binade
    (7.9, 0, 1, 1, 1),          # floor: 7.9 saturates to 6 * scale
    (8.0, 1, 1, 1, 1),
    (6.01, 0, 1, 0, 1),
    (1.0, -2, -2, -2, -2),
    (0.75, -3, -2, -3, -3),     # even: 0.75 = 1.1b * 2^-1 fits one mantissa bit
    (0.875, -3, -2, -2, -2),    # even: 0.875 = 1.11b * 2^-1 rounds to 1.0 * 2^0
])
def test_e8m0_rules(amax, floor, ceil, even, rceil):
    assert e8m0_exp(amax, "floor") == floor
    assert e8m0_exp(amax, "ceil") == ceil
    assert e8m0_exp(amax, "even") == even
    assert e8m0_exp(amax, "rceil") == rceil


def test_e8m0_clamps_and_specials():
    assert e8m0_exp(0.0, "floor") == -127           # zero block: smallest scale
    assert e8m0_exp(2.0 ** 127, "floor") == 125
    assert e8m0_exp(3e38, "rceil") == 126             # ceil(log2(3e38 / 6)) = 126
    assert e8m0_exp(1e-45, "floor") == -127         # clamped at the bottom
    fmt = F.MXFP4
    codes = compute_scale_codes(torch.tensor([math.nan, math.inf, -math.inf, 1.0]), fmt, ONE)
    assert codes.tolist() == [255, 255, 255, 125]


def test_e8m0_floor_uses_element_emax():
    assert e8m0_exp(448.0, "floor", F.E4M3) == 0     # emax(e4m3) = 8
    assert e8m0_exp(57344.0, "floor", F.E5M2) == 0   # emax(e5m2) = 15
    assert e8m0_exp(28.0, "floor", F.E3M2) == 0      # emax(e3m2) = 4


def amax_scale(amax, scale=F.UE4M3, rounding="nearest", s_enc=1.0, tensor=False):
    fmt = F.QuantFormat(F.E2M1, scale, 16, scale_rule="amax", scale_rounding=rounding, tensor_scale=tensor)
    code = compute_scale_codes(torch.tensor([amax]), fmt, torch.tensor(s_enc))
    return float(decode_scales(code, scale)) if scale.kind != "fp32" else float(code)


def test_amax_rule_nearest_even_and_up():
    assert amax_scale(6.0) == 1.0
    assert amax_scale(6 * 1.0625) == 1.0           # tie between 1.0 and 1.125 -> even mantissa
    assert amax_scale(6 * 1.1875) == 1.25          # tie between 1.125 and 1.25 -> even (1.25)
    assert amax_scale(6 * 1.0625, rounding="up") == 1.125
    assert amax_scale(6 * 1.0, rounding="up") == 1.0
    assert amax_scale(6 * 1000.0) == 448.0         # saturates at the format max
    assert amax_scale(6 * 2.0 ** -11) == 0.0       # below half the min subnormal: zero scale
    assert amax_scale(6 * 2.0 ** -11, rounding="up") == 2.0 ** -9
    assert amax_scale(6 * 2.0 ** -17, scale=F.UE5M3) == 2.0 ** -17
    assert amax_scale(6 * 2.0 ** 17, scale=F.UE5M3) == 114688.0
    assert amax_scale(6 * 2.0 ** 17, scale=F.ue5m3("all_finite")) == 122880.0
    assert amax_scale(6 * 2.0 ** 17, scale=F.ue5m3("ieee")) == 61440.0
    assert amax_scale(3.0, scale=F.FP32_SCALE) == 0.5


def test_nan_block_gets_nan_code_or_raises_without_one():
    fmt = F.QuantFormat(F.E2M1, F.UE4M3, 16, scale_rule="amax")
    assert compute_scale_codes(torch.tensor([math.nan]), fmt, ONE).tolist() == [0x7F]
    fmt5 = F.QuantFormat(F.E2M1, F.UE5M3, 16, scale_rule="amax")
    assert compute_scale_codes(torch.tensor([math.inf]), fmt5, ONE).tolist() == [0xFF]
    fmt_allf = F.QuantFormat(F.E2M1, F.ue5m3("all_finite"), 16, scale_rule="amax")
    with pytest.raises(ValueError, match="no NaN code"):
        compute_scale_codes(torch.tensor([math.nan]), fmt_allf, ONE)


def test_tensor_encode_scale():
    s = tensor_encode_scale(torch.tensor(2688.0), F.NVFP4)       # 448 * 6 / 2688 = 1
    assert float(s) == 1.0
    assert float(tensor_encode_scale(torch.tensor(1.0), F.NVFP4)) == 2688.0
    assert float(tensor_encode_scale(torch.tensor(0.0), F.NVFP4)) == 1.0
    assert float(tensor_encode_scale(torch.tensor(math.nan), F.NVFP4)) == 1.0
    # 2688 / 1e-45 overflows: clamped to the fp32 max (a tiny tensor keeps its codes), not 1
    assert float(tensor_encode_scale(torch.tensor(1e-45), F.NVFP4)) == torch.finfo(torch.float32).max


def test_two_level_block_scale():
    # amax_block / 6 * S_enc with S_enc = 2688 / 12: the largest block scale lands on 448.
    s_enc = tensor_encode_scale(torch.tensor(12.0), F.NVFP4)
    assert amax_scale(12.0, s_enc=float(s_enc), tensor=True) == 448.0
    assert amax_scale(3.0, s_enc=float(s_enc), tensor=True) == 112.0
