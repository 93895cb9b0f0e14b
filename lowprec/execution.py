"""Which kernel computes each GEMM of a quantized linear layer (fprop, dgrad, wgrad).

Three kernels:

- ``fp32_matmul``: the simulator's GEMM, the fp32 matmul of the fake-quantized operands
  (dequantized values in fp32). It defines the numerics and runs anywhere.
- ``fp4_qgemm``: the Triton FP4 GEMM (``lowprec.qgemm``) reading packed E2M1 codes and 8-bit
  block scales, decoding to bf16 in registers for the tensor cores and accumulating in fp32,
  tensor scales applied once in the epilogue. Its result is the same product summed in
  another order: within the quantized-GEMM bound of the reference (docs/numerics.md), while
  the quantized operands themselves are bit for bit the reference's.
- ``scaled_mm``: the same product on PyTorch's native block-scaled FP4 matmul
  (``torch.nn.functional.scaled_mm``, ``lowprec.scaled_mm_gemm``), chosen instead of
  ``fp4_qgemm`` on GPUs of compute capability 10.0 and newer for MXFP4 and NVFP4 operands
  (E8M0 or UE4M3 scales); its first use per device and format is checked against
  ``fp4_qgemm`` and, if that check fails, the GEMM runs on ``fp4_qgemm`` with a warning.

``Recipe.gemm_backend`` picks: ``"auto"`` runs ``fp4_qgemm`` for every GEMM whose operands
allow it when the layer's tensors are on CUDA and ``fp32_matmul`` on a CPU; ``"simulate"``
always runs ``fp32_matmul``; ``"kernels"`` runs ``fp4_qgemm`` for every GEMM on any device (on
a CPU that needs ``TRITON_INTERPRET=1``) and raises, naming the reason, for a GEMM it cannot
take. Under ``"auto"`` on CUDA a GEMM that stays on ``fp32_matmul`` is reported once per recipe
with a warning, never silently. ``gemm_kernels(recipe, device)`` says what runs and why.

A GEMM takes ``fp4_qgemm`` when both operands are quantized with E2M1 elements, the same
power-of-two block size and 8-bit block scales (1-D blocks along the GEMM's reduction axis, or
2-D tiles, which are the same values), and, for fprop, the estimator is ``ste`` or
``clipped_ste`` (whose trust mask the kernel path computes from the codes' block scales;
``scale_grad`` needs the fake-quantized operand, which the kernel path does not produce).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple, Optional

GEMMS = ("fprop", "dgrad", "wgrad")
KERNELS = ("fp32_matmul", "fp4_qgemm", "scaled_mm")


class GemmKernel(NamedTuple):
    kernel: str        # one of KERNELS
    reason: str        # why this kernel (why not the others)

    @property
    def quantized(self) -> bool:
        """The GEMM reads quantized codes and scales (the kernel path), not fake-quantized fp32."""
        return self.kernel != "fp32_matmul"


def _fp4_blocker(lhs, rhs, gemm: str, estimator: str) -> Optional[str]:
    """Why ``fp4_qgemm`` cannot compute this GEMM, or None when it can."""
    from .library import format_from_json
    for side, op in (("lhs", lhs), ("rhs", rhs)):
        if op.kind != "quant":
            return f"{gemm}.{side} is {op.kind}, not quantized"
    fa, fb = format_from_json(lhs.fmt_json), format_from_json(rhs.fmt_json)
    for side, f in (("lhs", fa), ("rhs", fb)):
        if f.element.name != "e2m1":
            return f"{gemm}.{side} has {f.element.name} elements; the FP4 GEMM reads E2M1"
        if f.scale.kind == "fp32":
            return f"{gemm}.{side} has fp32 block scales; the FP4 GEMM reads 8-bit scales"
        if f.block_size & (f.block_size - 1):
            return f"{gemm}.{side} has block size {f.block_size}; the FP4 GEMM needs a power of two"
    if fa.block_size != fb.block_size:
        return f"{gemm} operands have block sizes {fa.block_size} and {fb.block_size}; the FP4 GEMM needs one"
    if gemm == "fprop" and estimator not in ("ste", "clipped_ste"):
        return f"the {estimator} estimator needs the fake-quantized forward operands"
    return None


def _quantized_kernel(lhs, rhs, capability) -> GemmKernel:
    """fp4_qgemm, or scaled_mm where the GPU's tensor cores and torch take these formats."""
    from .library import format_from_json
    from .scaled_mm_gemm import scaled_mm_blocker
    why = scaled_mm_blocker(format_from_json(lhs.fmt_json), format_from_json(rhs.fmt_json), capability)
    if why is None:
        return GemmKernel("scaled_mm", "E2M1 operands with MX/NVFP4 block scales on block-scaled tensor cores")
    return GemmKernel("fp4_qgemm", f"E2M1 operands with 8-bit block scales (not scaled_mm: {why})")


@lru_cache(maxsize=None)
def _kernels(plan, device_type: str, capability) -> tuple:
    mode = plan.gemm_backend
    pairs = (plan.operands[0:2], plan.operands[2:4], plan.operands[4:6])
    out, fallbacks = [], []
    for gemm, (lhs, rhs) in zip(GEMMS, pairs):
        if mode == "simulate":
            out.append(GemmKernel("fp32_matmul", "gemm_backend='simulate'"))
            continue
        if mode == "auto" and device_type != "cuda":
            out.append(GemmKernel("fp32_matmul", f"the simulator on {device_type} (gemm_backend='auto')"))
            continue
        blocker = _fp4_blocker(lhs, rhs, gemm, plan.estimator)
        if blocker is None:
            out.append(_quantized_kernel(lhs, rhs, capability if device_type == "cuda" else None))
        elif mode == "kernels":
            raise ValueError(f"gemm_backend='kernels': {gemm} cannot run on the FP4 GEMM: {blocker}")
        else:
            out.append(GemmKernel("fp32_matmul", blocker))
            fallbacks.append(f"{gemm} ({blocker})")
    if fallbacks:
        warnings.warn("lowprec: on CUDA these GEMMs run as fp32 matmuls of fake-quantized operands, "
                      "not on the FP4 kernel: " + "; ".join(fallbacks), stacklevel=3)
    return tuple(out)


def kernels_for(plan, device_type: str) -> tuple:
    """(fprop, dgrad, wgrad) GemmKernel for a LinearPlan on a device type (cached)."""
    return _kernels(plan, device_type, _capability() if device_type == "cuda" else None)


@lru_cache(maxsize=None)
def _capability():
    from .scaled_mm_gemm import cuda_capability
    return cuda_capability()


def gemm_kernels(recipe, device="cpu") -> dict:
    """{gemm: GemmKernel} for a recipe (or preset name) on a device: what a QuantLinear with
    this recipe runs there, and why."""
    import torch
    from .autograd import plan_for
    from .recipe import get
    r = get(recipe) if isinstance(recipe, str) else recipe
    return dict(zip(GEMMS, kernels_for(plan_for(r), torch.device(device).type)))


# -- recording which kernels ran (tests, benchmarks) --------------------------------------------
_recorders: list = []
_quantizer_recorders: list = []


@contextmanager
def _recording(registry: list):
    calls: list = []
    registry.append(calls)
    try:
        yield calls
    finally:
        registry.remove(calls)


def record_kernels():
    """Collect (gemm, kernel) for every GEMM that runs inside the block."""
    return _recording(_recorders)


def record_quantizers():
    """Collect (operand, how it was quantized) for the kernel path's fused quantizers inside
    the block: ("X", "row_col_fused") when X's fprop and wgrad operands came from one pass,
    ("X", "two passes (<why>)") otherwise."""
    return _recording(_quantizer_recorders)


def note(gemm: str, kernel: str) -> None:
    for calls in _recorders:
        calls.append((gemm, kernel))


def note_quantizer(operand: str, how: str) -> None:
    for calls in _quantizer_recorders:
        calls.append((operand, how))


__all__ = ["GEMMS", "KERNELS", "GemmKernel", "gemm_kernels", "kernels_for", "record_kernels", "record_quantizers"]
