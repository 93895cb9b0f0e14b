"""The FP4 GEMM on torch's block-scaled matmul (lowprec.scaled_mm_gemm), for GPUs of compute
capability 10.0 and newer.

No such GPU has been available, so on the CPU these tests check what can be checked without
one:
- the tiled scale layout, against its published index formula (written out here
  independently of the permute that implements it);
- the operands handed to ``torch.nn.functional.scaled_mm``. They go through an emulator of
  the documented semantics (E2M1 pairs with the even index in the low nibble, column-major B,
  E8M0/UE4M3 block scales in the tiled layout), and the result must be qgemm's product;
- which kernel each GEMM gets on which capability, and why.
On such a GPU, each format's first use is checked against the Triton GEMM (``verified``),
and ``pytest -m gpu`` runs a converted layer on the real kernel
(test_gemm_kernel_path.py).
"""

import pytest
import torch
import torch.nn.functional as F

import lowprec
from lowprec import execution
from lowprec import scaled_mm_gemm as smm
from lowprec.gemm import qgemm_reference

E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def tiled_offset(r: int, c: int, cols: int) -> int:
    """Byte of scale (r, c) in the 128 x 4 tiled layout: tiles in row-major tile order, 512
    bytes each; inside a tile (r mod 32) * 16 + ((r div 32) mod 4) * 4 + (c mod 4)."""
    col_tiles = -(-cols // 4)
    tile = (r // 128) * col_tiles + c // 4
    return tile * 512 + (r % 32) * 16 + ((r // 32) % 4) * 4 + c % 4


@pytest.mark.parametrize("shape", [(128, 4), (130, 5), (7, 2), (256, 12)])
def test_swizzled_scale_layout(shape):
    rows, cols = shape
    s = torch.randint(0, 255, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(rows))
    flat = smm.swizzle_scales(s)
    assert flat.numel() == -(-rows // 128) * 128 * -(-cols // 4) * 4
    for r in range(rows):
        for c in range(cols):
            assert flat[tiled_offset(r, c, cols)] == s[r, c], (r, c)
    assert torch.equal(smm.unswizzle_scales(flat, rows, cols), s)


def emulated_scaled_mm(mat_a, mat_b, scale_a, recipe_a, scale_b, recipe_b, swizzle_a=None, swizzle_b=None,
                       output_dtype=torch.bfloat16, **_):
    """What the block-scaled FP4 matmul computes, from its documented operand layouts."""
    assert mat_a.dtype == mat_b.dtype == torch.float4_e2m1fn_x2
    assert swizzle_a == swizzle_b == F.SwizzleType.SWIZZLE_32_4_4 and output_dtype == torch.float32
    block = {F.ScalingType.BlockWise1x32: 32, F.ScalingType.BlockWise1x16: 16}[recipe_a]
    assert recipe_b == recipe_a

    def values(codes_2x, scales, scale_dtype):
        b = codes_2x.view(torch.uint8)
        rows, half_k = b.shape
        codes = torch.stack((b & 0xF, b >> 4), -1).reshape(rows, 2 * half_k).long()   # even index: low nibble
        flat = scales.view(torch.uint8)
        cols = 2 * half_k // block
        idx = torch.tensor([[tiled_offset(r, c, cols) for c in range(cols)] for r in range(rows)])
        sc = flat[idx].view(scale_dtype).to(torch.float32)
        return E2M1_VALUES[codes] * sc.repeat_interleave(block, 1)

    assert scale_a.dtype == scale_b.dtype
    a = values(mat_a, scale_a, scale_a.dtype)
    b = values(mat_b.t(), scale_b, scale_b.dtype)               # B arrives as (K/2, N), column-major
    return a @ b.t()


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("shape", [(64, 48, 128), (130, 40, 96)])
def test_scaled_mm_operands_give_the_qgemm_product(fmt, shape, monkeypatch):
    m, n, k = shape
    if k % lowprec.get_format(fmt).block_size:
        pytest.skip("K holds whole blocks")
    monkeypatch.setattr(F, "scaled_mm", emulated_scaled_mm)
    g = torch.Generator().manual_seed(m)
    qa = lowprec.quantize(torch.randn(m, k, generator=g) * 5, fmt, backend="reference")
    qb = lowprec.quantize(torch.randn(n, k, generator=g), fmt, backend="reference")
    got = smm.scaled_mm_qgemm(qa, qb)
    want = qgemm_reference(qa, qb)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    if fmt == "nvfp4":          # the tensor scales are applied: without them the product is far off
        assert qa.tensor_scale is not None and float(qa.tensor_scale) != 1.0


def test_kernel_choice_by_capability(monkeypatch):
    """sm_100+: nvfp4 and mxfp4 GEMMs take scaled_mm; UE5M3 scales (no torch dtype) stay on
    the Triton GEMM and say why; sm_90 keeps the Triton GEMM; a torch without scaled_mm too."""
    monkeypatch.setattr(execution, "_capability", lambda: (10, 0))
    for name in ("nvfp4", "mxfp4"):
        k = execution.gemm_kernels(lowprec.recipes.get(name), "cuda")
        assert {v.kernel for v in k.values()} == {"scaled_mm"}, (name, k)
    k = execution.gemm_kernels(lowprec.recipes.get("ue5m3"), "cuda")
    assert {v.kernel for v in k.values()} == {"fp4_qgemm"}
    assert "ue5m3 scales on blocks of 16 have no torch block-scaled recipe" in k["fprop"].reason
    assert {v.kernel for v in execution.gemm_kernels("nvfp4", "cpu").values()} == {"fp32_matmul"}
    monkeypatch.setattr(execution, "_capability", lambda: (9, 0))
    k = execution.gemm_kernels(lowprec.recipes.get("nvfp4"), "cuda")
    assert {v.kernel for v in k.values()} == {"fp4_qgemm"} and "(9, 0)" in k["fprop"].reason
    monkeypatch.setattr(execution, "_capability", lambda: (10, 0))
    monkeypatch.delattr(F, "scaled_mm")
    k = execution.gemm_kernels(lowprec.recipes.get("nvfp4").replace(name="nvfp4 (old torch)"), "cuda")
    assert {v.kernel for v in k.values()} == {"fp4_qgemm"} and "no torch.nn.functional.scaled_mm" in k["fprop"].reason


def test_failed_first_use_check_warns_and_keeps_the_triton_gemm(monkeypatch):
    """A scaled_mm that raises (or disagrees) is never used silently: the first call warns and
    the GEMM runs on the Triton kernel."""
    from lowprec import ops
    if not ops.backend_status("triton")[0]:
        pytest.skip("the check compares against the Triton GEMM (a GPU or TRITON_INTERPRET=1)")

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image")
    monkeypatch.setattr(F, "scaled_mm", broken)
    monkeypatch.setattr(smm, "_VERIFIED", {})
    with pytest.warns(UserWarning, match="failed its first-use check.*no kernel image"):
        assert not smm.verified(lowprec.get_format("mxfp4"), torch.device("cpu"))
    monkeypatch.setattr(F, "scaled_mm", emulated_scaled_mm)
    monkeypatch.setattr(smm, "_VERIFIED", {})
    assert smm.verified(lowprec.get_format("mxfp4"), torch.device("cpu"))
