"""Quantized GEMM: every backend within docs/numerics.md's bound of the fp64 product of the
dequantized operands (at most twice the reference's error, plus a small atol)."""

import pytest
import torch

import lowprec
from lowprec import ops
from lowprec.reference import quantize as ref_quantize

GEMM_BACKENDS = [b for b in ("triton",) if ops.backend_status(b)[0] and b in ops.implementations("qgemm")]


def operands(fmt, m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g)
    a[:, :3] *= 20.0
    b = torch.randn(n, k, generator=g) / k ** 0.5
    return ref_quantize(a, fmt), ref_quantize(b, fmt)


def check(got, qa, qb):
    exact = qa.dequantize().double() @ qb.dequantize().double().t()
    ref_err = (lowprec.qgemm(qa, qb, backend="reference").double() - exact).abs().max()
    err = (got.double() - exact).abs().max()
    assert err <= 2 * ref_err + 1e-5 * exact.abs().max(), (float(err), float(ref_err))


@pytest.mark.parametrize("backend", GEMM_BACKENDS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no fast qgemm backend here (Triton needs a GPU or TRITON_INTERPRET=1)"))])
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "ue5m3"])
@pytest.mark.parametrize("m,n,k", [(40, 24, 128), (1, 64, 64), (33, 7, 256)])
def test_fp4_gemm_within_bound(backend, fmt, m, n, k):
    qa, qb = operands(fmt, m, n, k, seed=m + n + k)
    got = lowprec.qgemm(qa, qb, backend=backend)
    assert got.shape == (m, n) and got.dtype == torch.float32
    check(got, qa, qb)


@pytest.mark.skipif(not GEMM_BACKENDS, reason="no fast qgemm backend here (Triton needs a GPU or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("tiles", [(16, 16, 64), (64, 32, 128)])
def test_fp4_gemm_tile_shapes_and_grouped_order(tiles):
    """Explicit tiles, with more tile rows than one group of GROUP_M = 8 (and a ragged last
    group), so the grouped program order must still cover every tile of C exactly once."""
    qa, qb = operands("nvfp4", 300, 70, 224, seed=3)         # K = 224: a ragged last K tile
    got = lowprec.qgemm(qa, qb, backend="triton", tiles=tiles)
    check(got, qa, qb)
    with pytest.raises(ValueError, match="whole blocks of 16"):
        lowprec.qgemm(qa, qb, backend="triton", tiles=(16, 16, 24))


def test_reference_qgemm_is_dequantized_matmul():
    qa, qb = operands("nvfp4", 8, 16, 64)
    assert torch.equal(lowprec.qgemm(qa, qb, backend="reference"), qa.dequantize() @ qb.dequantize().t())


def test_qgemm_errors():
    qa, qb = operands("mxfp4", 8, 8, 64)
    with pytest.raises(ValueError, match="K differs"):
        lowprec.qgemm(qa, ref_quantize(torch.randn(8, 96), "mxfp4"))
    with pytest.raises(ValueError, match="1D blocks along K"):
        lowprec.qgemm(qa, ref_quantize(torch.randn(64, 8), lowprec.MXFP4.replace(axis=0)))
    if GEMM_BACKENDS:
        with pytest.raises(ValueError, match="E2M1"):
            lowprec.qgemm(ref_quantize(torch.randn(8, 64), "mxfp8"), ref_quantize(torch.randn(8, 64), "mxfp8"),
                          backend="triton")
        odd = lowprec.MXFP4.replace(block_size=24)
        with pytest.raises(ValueError, match="power-of-two block size"):
            lowprec.qgemm(ref_quantize(torch.randn(8, 48), odd), ref_quantize(torch.randn(8, 48), odd), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_fp4_gemm_on_gpu(fmt):
    qa, qb = operands(fmt, 256, 512, 1024)
    got = lowprec.qgemm(qa.to("cuda"), qb.to("cuda"), backend="triton").cpu()
    check(got, qa, qb)
