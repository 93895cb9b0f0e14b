"""Reference quantize/dequantize: golden blocks, layouts, padding, errors, special values."""

import math

import pytest
import torch

import lowprec
from lowprec import formats as F
from lowprec.reference import dequantize, quantize


def test_mxfp4_golden_block():
    x = torch.tensor([6.0, 3.0, -1.5, 0.25, 0.26, 5.0, -7.9, 0.0] + [0.0] * 24)
    q = quantize(x, F.MXFP4)
    assert q.scales.tolist() == [127]                     # floor(log2 7.9) - 2 = 0
    expected = [6.0, 3.0, -1.5, 0.0, 0.5, 4.0, -6.0, 0.0] + [0.0] * 24
    assert dequantize(q).tolist() == expected
    codes = q.element_codes()[:8].tolist()
    assert codes == [7, 5, 8 | 3, 0, 1, 6, 8 | 7, 0]
    assert q.codes[:4].tolist() == [7 | 5 << 4, 11 | 0 << 4, 1 | 6 << 4, 15 | 0 << 4]   # even index low nibble


def test_nvfp4_golden_block():
    x = torch.tensor([12.0, -3.0, 1.0, 0.0] + [0.0] * 12 + [0.75] + [0.0] * 15)
    q = quantize(x, F.NVFP4)
    s_enc = 448 * 6 / 12.0
    assert float(q.tensor_scale) == pytest.approx(s_enc, rel=0, abs=0)
    scales = F.UE4M3.table()[q.scales.long()]
    assert scales.tolist()[0] == 448.0                    # 12/6 * 224 = 448
    xh = dequantize(q)
    assert xh[:4].tolist() == [12.0, -3.0, 1.0, 0.0]
    assert xh[16].item() == 0.75


def test_layout_shapes_and_axis():
    x = torch.randn(3, 40, 5)
    q = quantize(x, F.MXFP4.replace(axis=1))
    assert q.axis == 1
    assert q.codes.shape == (3, 5, 32) and q.scales.shape == (3, 5, 2)   # 40 padded to 64, packed
    assert dequantize(q).shape == x.shape


def test_2d_tiles_shared_by_transpose():
    w = torch.randn(48, 80)
    fmt = F.NVFP4.replace(block_2d=True)
    q, qt = quantize(w, fmt), quantize(w.t().contiguous(), fmt)
    assert q.scales.shape == (3, 5)
    assert torch.equal(q.scales, qt.scales.t())
    assert torch.equal(dequantize(q), dequantize(qt).t())


def test_padding_never_leaks():
    x = torch.randn(7, 37) * 3
    q = quantize(x, F.NVFP4)
    y = dequantize(q)
    assert y.shape == x.shape
    # the padded tail of the last block is zero codes, and the crop equals quantizing a padded copy
    xp = torch.nn.functional.pad(x, (0, 11))
    assert torch.equal(dequantize(quantize(xp, F.NVFP4))[:, :37], y)


def test_strict_refuses_ragged_shapes():
    with pytest.raises(ValueError, match="not a multiple of block_size 32"):
        quantize(torch.randn(4, 33), F.MXFP4, strict=True)
    with pytest.raises(ValueError, match="tiles"):
        quantize(torch.randn(20, 32), F.NVFP4.replace(block_2d=True), strict=True)
    quantize(torch.randn(4, 64), F.MXFP4, strict=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_round_trip(dtype):
    x = torch.randn(8, 64).to(dtype)
    y = lowprec.dequantize(lowprec.quantize(x, "nvfp4"))
    assert y.dtype == dtype
    assert torch.equal(y.float(), dequantize(quantize(x.float(), "nvfp4")).to(dtype).float())


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8, torch.complex64])
def test_bad_dtype(dtype):
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        quantize(torch.zeros(32).to(dtype), "mxfp4")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown rounding"):
        quantize(torch.zeros(32), "mxfp4", rounding="up")
    with pytest.raises(ValueError, match="needs an explicit seed"):
        quantize(torch.zeros(32), "mxfp4", rounding="stochastic")
    with pytest.raises(ValueError, match="unknown format"):
        quantize(torch.zeros(32), "int4")
    with pytest.raises(ValueError, match="0-d"):
        quantize(torch.tensor(1.0), "mxfp4")
    with pytest.raises(ValueError, match="2D blocks need"):
        quantize(torch.zeros(32), F.NVFP4.replace(block_2d=True))
    with pytest.raises(ValueError, match="nan_policy"):
        quantize(torch.zeros(32), "mxfp4", nan_policy="ignore")


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "ue5m3", "mxfp8"])
def test_nan_and_inf_blocks(fmt):
    x = torch.randn(4, 64)
    x[1, 3] = math.nan
    x[2, 40] = math.inf
    y = dequantize(quantize(x, fmt))
    bs = F.get_format(fmt).block_size
    assert torch.isnan(y[1, :bs]).all() and torch.isnan(y[2, 40 // bs * bs:(40 // bs + 1) * bs]).all()
    nan_mask = torch.isnan(y)
    assert int(nan_mask.sum()) == 2 * bs                  # only the two poisoned blocks
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[3]).all()
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize(x, fmt, nan_policy="raise")


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "ue5m3"])
def test_zero_blocks(fmt):
    x = torch.zeros(3, 64)
    x[1, 33] = 2.0
    q = quantize(x, fmt)
    y = dequantize(q)
    assert torch.equal(y, x) and not torch.isnan(y).any()
    q0 = quantize(torch.zeros(2, 32), fmt)
    assert torch.equal(dequantize(q0), torch.zeros(2, 32)) and (q0.element_codes() == 0).all()


def test_zero_scale_gives_zero_elements():
    # a block 2^20 times smaller than the tensor max gets a UE4M3 scale of 0 (it underflows)
    x = torch.zeros(2, 16)
    x[0, 0] = 1.0
    x[1, :] = 2.0 ** -20
    q = quantize(x, F.NVFP4)
    assert int(q.scales[1, 0]) == 0
    y = dequantize(q)
    assert torch.equal(y[1], torch.zeros(16)) and torch.isfinite(y).all()


def test_saturation():
    x = torch.tensor([7.9, -7.9] + [0.0] * 30)
    assert dequantize(quantize(x, "mxfp4"))[:2].tolist() == [6.0, -6.0]


def test_fake_quantize_straight_through():
    x = torch.randn(4, 32, requires_grad=True)
    y = lowprec.fake_quantize(x, "mxfp4")
    assert torch.equal(y.detach(), dequantize(quantize(x.detach(), "mxfp4")))
    (y * torch.arange(32.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(32.0).expand(4, 32))


def test_quantized_tensor_storage():
    q = quantize(torch.randn(64, 64), "nvfp4")
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (64, 32)
    assert q.nbytes == 64 * 32 + 64 * 4 + 4
    assert "nvfp4" in repr(q)
