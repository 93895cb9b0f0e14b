"""The division convention (QuantFormat.division): IEEE quotients by default, or multiplication
by fp32 reciprocals as NVIDIA's kernels and Transformer Engine compute. Golden values come from
an independent float32 transcription of Transformer Engine's published NVFP4 formulas:
    S_enc   = min(448 * 6 / amax_tensor, fp32 max)        (1 when amax is 0)
    S_dec_b = e4m3(block_amax * (S_enc * fp32(1 / 6)))    (round to nearest, saturating)
    rcp     = min(1 / (S_dec_b * fp32(1 / S_enc)), fp32 max)
    code    = e2m1(x * rcp)                               (round to nearest even, saturating)
Every backend present must agree with the reference bit for bit in both modes
(test_backend_exactness.py lists reciprocal formats too)."""

import ml_dtypes
import numpy as np
import pytest
import torch

import lowprec
from lowprec import ops
from lowprec.reference import dequantize as ref_dequantize
from lowprec.reference import quantize as ref_quantize

F32 = np.float32
FP32_MAX = F32(3.4028235e38)
MIDPOINTS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]      # halfway between neighbouring E2M1 values
BACKENDS = [b for b in ("reference", "cpp", "triton") if ops.backend_status(b)[0]
            and b in ops.implementations("quantize")]


def te_nvfp4(x: np.ndarray, amax_tensor: float):
    """(E2M1 element values, decoded E4M3 block scales, S_enc) by Transformer Engine's formulas,
    every operation in numpy float32 (IEEE), for blocks of 16 along the last dim."""
    x = x.astype(F32).reshape(-1, 16)
    amax = F32(amax_tensor)
    s_enc = F32(1) if amax == 0 else min(F32(448) * F32(6) / amax, FP32_MAX)
    block_amax = np.abs(x).max(1).astype(F32)
    s_dec_b = (block_amax * (s_enc * (F32(1) / F32(6)))).astype(F32)
    s_dec_b = np.minimum(s_dec_b, F32(448)).astype(ml_dtypes.float8_e4m3fn).astype(F32)
    rcp = np.minimum(F32(1) / (s_dec_b * (F32(1) / s_enc)), FP32_MAX).astype(F32)
    y = np.clip(x * rcp[:, None], -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(F32)
    return y, s_dec_b, s_enc


def tie_block(scale: float) -> torch.Tensor:
    """[6, midpoints, -midpoints, 0] * scale: every element but the max is an exact tie of x / scale."""
    m = torch.tensor(MIDPOINTS)
    return (torch.cat([torch.tensor([6.0]), m, -m, torch.tensor([0.0])]) * scale).reshape(1, 16)


def element_values(q):
    return q.fmt.element.table()[q.element_codes().long()].reshape(q.shape)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_golden_values(backend):
    """Scale 15/16 (a UE4M3 value; no tensor scale): x / s lands exactly on midpoints, which IEEE
    rounds to even; fp32(1 / 0.9375) = 1.0666667461... lies above 16/15, so x * fp32(1 / s) is a
    little above each midpoint (e.g. 1.25 * 0.9375 * rcp = 1.2500001) and rounds up."""
    fmt = lowprec.NVFP4.replace(tensor_scale=False)
    x = tie_block(0.9375)
    ieee = lowprec.quantize(x, fmt, backend=backend)
    rcp = lowprec.quantize(x, fmt.replace(division="reciprocal"), backend=backend)
    up, even = [0, 1, 1.5, 2, 3, 4, 6], [0, 1, 1, 2, 2, 4, 4]
    assert element_values(ieee)[0].tolist() == [6.0] + even + [-v for v in even] + [0.0]
    assert element_values(rcp)[0].tolist() == [6.0] + up + [-v for v in up] + [0.0]
    assert ieee.scales.tolist() == rcp.scales.tolist() == [[0x37]]      # 0.9375 = 1.111b x 2^-1
    y, s_dec, _ = te_nvfp4(x.numpy(), float(x.abs().max()))
    assert np.array_equal(element_values(rcp).numpy(), y)


def tie_heavy(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = lowprec.UE4M3.table()[torch.randint(8, 120, (512,), generator=g)]
    blocks = torch.cat([tie_block(float(s)) for s in scales])
    return blocks[:, torch.randperm(16, generator=g)] * torch.where(torch.rand(512, 1, generator=g) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data", ["normal", "tie_heavy"])
def test_reciprocal_nvfp4_equals_transformer_engine_formulas(backend, data):
    """NVFP4 (tensor scale on) with division='reciprocal' gives TE's codes and scales everywhere;
    on tie-heavy data the IEEE default differs from them (so this test can tell the two apart)."""
    if data == "normal":
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2048, 16, generator=g) * torch.exp2(torch.randint(-6, 7, (2048, 1), generator=g).float())
    else:
        x = tie_heavy(2)
    y, s_dec, s_enc = te_nvfp4(x.numpy(), float(x.abs().max()))
    fmt = lowprec.NVFP4.replace(division="reciprocal")
    q = lowprec.quantize(x, fmt, backend=backend)
    assert float(q.tensor_scale) == s_enc
    assert np.array_equal(fmt.scale.table()[q.scales.long()].reshape(-1).numpy(), s_dec)
    assert np.array_equal(element_values(q).numpy(), y)
    # dequantize: element * (decode * fp32(1 / S_enc))
    expect = y * (s_dec * (F32(1) / s_enc))[:, None]
    assert np.array_equal(lowprec.dequantize(q, torch.float32, backend=backend).numpy(), expect)
    ieee = element_values(lowprec.quantize(x, lowprec.NVFP4, backend=backend)).numpy()
    if data == "tie_heavy":
        assert (ieee != y).mean() > 0.01


def test_ieee_and_reciprocal_agree_without_ties_on_mx_formats():
    """Power-of-two scales and no tensor scale: x * (1 / s) == x / s exactly."""
    x = tie_heavy(3)
    for fmt in (lowprec.MXFP4, lowprec.MXFP8):
        a = ref_quantize(x, fmt)
        b = ref_quantize(x, fmt.replace(division="reciprocal"))
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
        assert torch.equal(ref_dequantize(a), ref_dequantize(b))


def test_division_is_validated_and_serialized():
    with pytest.raises(ValueError, match="division"):
        lowprec.NVFP4.replace(division="fast")
    f = lowprec.NVFP4.replace(division="reciprocal")
    assert lowprec.QuantFormat.from_dict(f.to_dict()) == f and "+rcp" in str(f)
