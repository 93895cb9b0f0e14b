"""The kernel execution path of QuantLinear (lowprec.execution): each GEMM quantizes its
operands to codes and runs the Triton FP4 GEMM instead of the simulator's fp32 matmul of
fake-quantized copies.  On this CPU the Triton kernels run under TRITON_INTERPRET=1 with
``gemm_backend="kernels"``; ``pytest -m gpu`` runs the same checks on CUDA with the default
``"auto"``.

What must hold: the operands are quantized bit for bit as the simulator quantizes them (the
saved wgrad operand is compared code for code), the results are within the quantized-GEMM
bound of the simulator (the only difference is the order of the fp32 sums), the layer really
ran the kernels (recorded), and backward keeps 4-bit codes instead of the fp32 activations.
"""

import warnings

import pytest
import torch
from torch import nn

import lowprec
from lowprec import ops
from lowprec.autograd import _padded_tokens, _transform, plan_for, quantize_operand, slot_offsets
from lowprec.execution import gemm_kernels, record_kernels, record_quantizers
from lowprec.formats import get_format
from lowprec.gemm_operands import as_gemm_operand

TRITON = ops.backend_status("triton")[0]
needs_triton = pytest.mark.skipif(not TRITON, reason="the Triton kernels need a GPU or TRITON_INTERPRET=1")
FP4_RECIPES = ["nvfp4", "mxfp4", "ue5m3"]


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4", "mxfp8", "ue5m3"])
@pytest.mark.parametrize("layout", ["rows", "cols", "tiles"])
@pytest.mark.parametrize("shape", [(37, 53), (32, 64)])
def test_gemm_operand_layouts_hold_the_same_values(fmt, layout, shape):
    """Blocks along axis 0 read as the transpose, and 2-D tiles read either way, without
    changing a value: the GEMM multiplies what the reference quantized."""
    f = get_format(fmt)
    f = {"rows": f.replace(axis=-1), "cols": f.replace(axis=0), "tiles": f.replace(block_2d=True)}[layout]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3
    q = lowprec.quantize(x, f, backend="reference")
    values = q.dequantize(torch.float32)
    for transpose in (False, True):
        if (layout == "rows" and transpose) or (layout == "cols" and not transpose):
            with pytest.raises(ValueError, match="re-quantization"):
                as_gemm_operand(q, transpose)
            continue
        g = as_gemm_operand(q, transpose)
        assert g.axis == 1 and not g.fmt.block_2d
        assert torch.equal(g.dequantize(torch.float32), values.t() if transpose else values)


def test_kernel_choice_and_reasons():
    cpu = {g: k.kernel for g, k in gemm_kernels("nvfp4", "cpu").items()}
    assert cpu == dict.fromkeys(("fprop", "dgrad", "wgrad"), "fp32_matmul")     # the simulator on a CPU
    for name in FP4_RECIPES:
        for device, mode in (("cuda", "auto"), ("cpu", "kernels")):
            r = lowprec.recipes.get(name, gemm_backend=mode)
            assert {k.kernel for k in gemm_kernels(r, device).values()} == {"fp4_qgemm"}, (name, device)
    assert {k.kernel for k in gemm_kernels(lowprec.recipes.get("nvfp4", gemm_backend="simulate"), "cuda").values()} \
        == {"fp32_matmul"}
    with pytest.raises(ValueError, match="e4m3 elements"):
        gemm_kernels(lowprec.recipes.get("mxfp8", gemm_backend="kernels"))
    with pytest.raises(ValueError, match="bf16, not quantized"):
        gemm_kernels(lowprec.recipes.get("bf16", gemm_backend="kernels"))
    with pytest.warns(UserWarning, match="fp32 matmuls of fake-quantized operands"):   # never silent on CUDA
        k = gemm_kernels(lowprec.recipes.get("mxfp8").replace(name="mxfp8 (warning test)"), "cuda")
    assert k["fprop"].kernel == "fp32_matmul" and "e4m3" in k["fprop"].reason
    with pytest.warns(UserWarning, match="scale_grad estimator"):
        k = gemm_kernels(lowprec.recipes.get("nvfp4", estimator="scale_grad", gemm_backend="auto"), "cuda")
    assert k["fprop"].kernel == "fp32_matmul" and "estimator" in k["fprop"].reason
    assert k["dgrad"].kernel == k["wgrad"].kernel == "fp4_qgemm"
    # the trust mask (clipped_ste) comes from the codes' scales: fprop stays on the kernel
    k = gemm_kernels(lowprec.recipes.get("quartet", gemm_backend="kernels"), "cpu")
    assert {g.kernel for g in k.values()} == {"fp4_qgemm"}
    with pytest.raises(ValueError, match="gemm_backend"):
        lowprec.recipes.get("nvfp4", gemm_backend="fast")
    r = lowprec.recipes.get("nvfp4", gemm_backend="kernels")
    assert type(r).from_json(r.to_json()) == r


def _model(recipe, frozen=False, device="cpu"):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32))
    m = lowprec.convert_model(m, recipe).to(device)
    if frozen:
        m[0].weight.requires_grad_(False)
    return m


def _run(recipe, x, frozen=False):
    m = _model(recipe, frozen, x.device)
    x = x.clone().requires_grad_(True)
    with record_kernels() as calls:
        y = m(x)
        y.square().mean().backward()
    grads = [x.grad] + [p.grad for p in m.parameters() if p.requires_grad]
    return y.detach(), grads, calls


def _close(a, b):
    # the quantized-GEMM bound allows 2x the reference's fp32 error plus 1e-5 of the largest
    # value; this checks the stricter |kernel - simulator| <= 1e-5 * max |simulator|
    return (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()


def check_kernel_path_matches_simulator(name, device, mode, shape=(40, 64), frozen=False, fprop="fp4_qgemm",
                                        backward="fp4_qgemm", **overrides):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(device)
    y_s, g_s, calls_s = _run(lowprec.recipes.get(name, gemm_backend="simulate", **overrides), x, frozen)
    y_k, g_k, calls_k = _run(lowprec.recipes.get(name, gemm_backend=mode, **overrides), x, frozen)
    assert set(calls_s) == {("fprop", "fp32_matmul"), ("dgrad", "fp32_matmul"), ("wgrad", "fp32_matmul")}
    assert set(calls_k) == {("fprop", fprop), ("dgrad", backward), ("wgrad", backward)}
    assert len(calls_k) == len(calls_s)
    assert not torch.equal(y_s, torch.zeros_like(y_s))
    assert _close(y_k, y_s), (y_k - y_s).abs().max()
    for a, b in zip(g_k, g_s):
        assert _close(a, b), (a - b).abs().max() / b.abs().max()


@needs_triton
@pytest.mark.parametrize("name", FP4_RECIPES)
def test_kernel_path_matches_the_simulator(name):
    check_kernel_path_matches_simulator(name, "cpu", "kernels")


@needs_triton
def test_kernel_path_three_dim_inputs_and_frozen_weight():
    check_kernel_path_matches_simulator("nvfp4", "cpu", "kernels", shape=(3, 8, 64))
    check_kernel_path_matches_simulator("nvfp4", "cpu", "kernels", frozen=True)


def check_saved_operand_is_the_reference_quantization(device, mode, tokens=40):
    recipe = lowprec.recipes.get("nvfp4", gemm_backend=mode)
    layer = _model(recipe, device=device)[0]
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(3)).to(device)
    rng_before = torch.stack((torch.tensor(layer.seed), layer.sr_offset.clone().cpu()))
    y = layer(x)
    saved = y.grad_fn.saved_tensors
    assert saved[0] is None                                   # no fp32 X kept for backward
    codes, scales = saved[7], saved[8]
    assert codes.dtype == torch.uint8 and codes.numel() <= x.numel() // 2 + 64 * 8
    assert codes.numel() + scales.numel() < x.numel() * 4 / 5     # under a fifth of X's fp32 bytes (tokens padded 40 -> 48)
    # the same operand through the reference: Q(T_w^T X), tokens padded, the slot's Philox bits
    plan = plan_for(recipe.replace(backend="reference", hadamard_backend="reference", gemm_backend="simulate"))
    offsets, _ = slot_offsets(tokens, 64, 96, plan)
    x_pad = torch.nn.functional.pad(x, (0, 0, 0, _padded_tokens(tokens, plan.hadamard[2][0]) - tokens))
    x_w = _transform(x_pad.cpu(), plan.hadamard[2], 0, layer.seed, 2)
    want, _ = quantize_operand(x_w, plan.operands[5], rng_before, offsets[5], "ste", "reference")
    fmt, shape, dtype, axis = y.grad_fn.x_codes[:4]
    q = lowprec.QuantizedTensor(codes, scales, saved[9] if saved[9].numel() else None, fmt, shape, dtype, axis)
    assert torch.equal(q.dequantize(torch.float32).cpu(), want)


@needs_triton
@pytest.mark.parametrize("tokens", [40, 64])     # 40: X quantized twice (tokens padded); 64: one fused pass
def test_saved_wgrad_operand_is_the_reference_quantization(tokens):
    with record_quantizers() as how:
        check_saved_operand_is_the_reference_quantization("cpu", "kernels", tokens)
    assert how == [("X", "row_col_fused" if tokens == 64 else
                    "two passes (40 tokens x 64 features are not multiples of the 16-element tile)")]


@needs_triton
@pytest.mark.parametrize("name", FP4_RECIPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_x_quantizer_is_bit_exact_in_training(name, dtype):
    """With 64 tokens the forward pass quantizes X once for fprop and wgrad (recorded). The
    outputs and all gradients are bit for bit those of quantizing X twice (backend='cpp'
    takes the two-pass path with the same codes), since the operands are the same codes."""
    x = torch.randn(2, 32, 64, generator=torch.Generator().manual_seed(5)).to(dtype)
    runs = {}
    for backend in ("auto", "cpp"):
        with record_quantizers() as how:
            y, grads, calls = _run(lowprec.recipes.get(name, gemm_backend="kernels", backend=backend), x)
        runs[backend] = (y, grads, how)
        assert {k for _, k in calls} == {"fp4_qgemm"}
    assert runs["auto"][2] == [("X", "row_col_fused")] * 2                # both layers
    assert len(runs["cpp"][2]) == 2 and all(h.startswith("two passes (backend='cpp'") for _, h in runs["cpp"][2])
    (y_f, g_f, _), (y_2, g_2, _) = runs["auto"], runs["cpp"]
    assert torch.equal(y_f, y_2) and not torch.equal(y_f, torch.zeros_like(y_f))
    for a, b in zip(g_f, g_2):
        assert torch.equal(a, b)


def test_fusion_blocker_reasons():
    from lowprec.activation_operands import fusion_blocker
    plan = plan_for(lowprec.recipes.get("nvfp4", gemm_backend="kernels"))
    if TRITON:
        assert fusion_blocker(plan, 64, 64, "cpu") is None
    assert "not multiples of the 16-element tile" in fusion_blocker(plan, 40, 64, "cpu")
    zero_x = lowprec.recipes.get("nvfp4").replace(**{"wgrad.rhs.rounding": "zero"})
    assert fusion_blocker(plan_for(zero_x), 64, 64, "cpu") == "fprop and wgrad round X differently"
    sr_x = lowprec.recipes.get("nvfp4").replace(**{"wgrad.rhs.rounding": "stochastic"})   # its scales round up
    assert fusion_blocker(plan_for(sr_x), 64, 64, "cpu") == "fprop and wgrad quantize X to different formats"
    h8 = lowprec.recipes.get("nvfp4").replace(**{"wgrad.hadamard": 256})
    assert "Hadamard sizes 0 (fprop) and 256 (wgrad)" in fusion_blocker(plan_for(h8), 512, 512, "cpu")
    assert "backend='reference'" in fusion_blocker(plan_for(lowprec.recipes.get("nvfp4", backend="reference")),
                                                   64, 64, "cpu")


def _cuda_kernel(name):
    """The quantized kernel a recipe's GEMMs get on this GPU (scaled_mm on sm_100+ for MXFP4/NVFP4)."""
    return gemm_kernels(name, "cuda")["dgrad"].kernel


@pytest.mark.gpu
@pytest.mark.parametrize("name", FP4_RECIPES)
def test_kernel_path_on_gpu(name):
    """On CUDA the default gemm_backend ("auto") takes the kernel path."""
    k = _cuda_kernel(name)
    check_kernel_path_matches_simulator(name, "cuda", "auto", fprop=k, backward=k)
    check_kernel_path_matches_simulator(name, "cuda", "auto", shape=(3, 8, 64), frozen=True, fprop=k, backward=k)


@pytest.mark.gpu
def test_kernel_path_with_a_forward_estimator_on_gpu():
    """clipped_ste keeps fprop on the fp32 matmul (warned); dgrad and wgrad take the kernel,
    and dgrad applies the saved estimator factor."""
    with pytest.warns(UserWarning, match="clipped_ste"):
        check_kernel_path_matches_simulator("nvfp4", "cuda", "auto", fprop="fp32_matmul", backward=_cuda_kernel("nvfp4"),
                                            estimator="clipped_ste")


@pytest.mark.gpu
def test_saved_wgrad_operand_on_gpu():
    check_saved_operand_is_the_reference_quantization("cuda", "auto")


def test_simulator_path_on_cpu_is_unchanged_by_default():
    """'auto' on a CPU is the simulator: the fp32 matmul of fake-quantized operands, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _, calls = _run(lowprec.recipes.get("nvfp4"), torch.randn(16, 64))
    assert {k for _, k in calls} == {"fp32_matmul"}


def test_frozen_weight_keeps_no_activations():
    """X feeds only wgrad: a layer with a frozen weight (PEFT's base) saves none, on the
    simulator path too, and its input gradient is unchanged (it used to keep the fp32 X)."""
    layer = _model("nvfp4", frozen=True)[0]
    x = torch.randn(16, 64, requires_grad=True)
    y = layer(x)
    assert y.grad_fn.saved_tensors[0] is None
    y.square().sum().backward()
    layer.weight.requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    layer.sr_offset.zero_()
    y2 = layer(x2)
    assert y2.grad_fn.saved_tensors[0] is not None
    y2.square().sum().backward()
    assert torch.equal(x.grad, x2.grad)
