"""Every Triton kernel compiles for real GPUs (sm_80 and sm_90), on a machine with none.

The interpreter (TRITON_INTERPRET=1) runs kernels as numpy and never lowers them, so code
that only a GPU compile rejects (branches returning different types, unsupported layouts)
would pass CI and fail on the first GPU. This test runs a small workload of every Triton op
under the interpreter, records each kernel launch (argument types, constexprs, launch
options), then compiles every recorded specialization down to a cubin with Triton's bundled
ptxas, in a process without the interpreter. The FP4 GEMM is also compiled with each tile
shape its GPU autotuner tries.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import lowprec
from lowprec import ops

HERE = Path(__file__).resolve().parent
CAPS = (80, 90)
LAUNCH_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")
TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.uint8: "u8",
         torch.int8: "i8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}

pytestmark = pytest.mark.skipif(
    not ops.backend_status("triton")[0] or torch.cuda.is_available(),
    reason="records launches under the Triton interpreter (CPU, TRITON_INTERPRET=1); on a GPU machine "
           "the kernels compile for real in the GPU tests")


def arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(1 << 31) <= value < (1 << 31) else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def describe(fn, args, kwargs) -> dict:
    """A launch of ``fn`` as an ahead-of-time compile job."""
    import triton.language as tl
    signature, constexprs = {}, {}
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        value = args[i] if i < len(args) else kwargs.get(p.name, p.default)
        if p.annotation is tl.constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = value
        else:
            signature[p.name] = arg_type(value)
    options = {k: kwargs[k] for k in LAUNCH_OPTIONS if k in kwargs}
    return dict(module=fn.__module__, name=fn.__name__, signature=signature, constexprs=constexprs,
                options=options, caps=list(CAPS))


def workload():
    """One small call of every Triton op (every kernel, the main specializations)."""
    from lowprec import sparse  # noqa: F401  (registers the masked-Adam op)
    from lowprec import formats as F
    from lowprec.galore import moments as mom
    from lowprec.triton.galore import launch_project_q, launch_update, launch_update_q
    from lowprec.sparse.kernels import masked_adam_step
    from lowprec.sparse.reference import StepScalars
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g)
    for fmt, rounding, dtype in [(F.MXFP4, "nearest", torch.float32), (F.NVFP4, "stochastic", torch.bfloat16),
                                 (F.MXFP8, "stochastic", torch.float16), (F.MXFP4.replace(axis=0), "stochastic", torch.float32),
                                 (F.NVFP4.replace(block_2d=True), "nearest", torch.float32),
                                 (F.QuantFormat(F.E2M1, F.FP32_SCALE, 32, scale_rule="amax"), "nearest", torch.float32),
                                 (F.UE5M3_FP4, "nearest", torch.bfloat16)]:
        q = lowprec.quantize(x.to(dtype), fmt, rounding=rounding, seed=1, backend="triton")
        lowprec.dequantize(q, backend="triton")
        lowprec.fake_quantize(x.to(dtype), fmt, rounding=rounding, seed=1, backend="triton")
    hq = ops.resolve("hadamard_quantize", "triton")
    hq(x.to(torch.bfloat16), 32, "nvfp4", "stochastic", seed=2, hadamard_seed=3)
    hq(x, 32, "mxfp8", "nearest")
    rc = ops.resolve("row_col_quantize", "triton")
    rc(x.to(torch.bfloat16), "nvfp4", "nearest", row_hadamard=(0, None), col_hadamard=(16, 3))   # the nvfp4 layer's X
    rc(x, "ue5m3", "stochastic", seed=1, row_hadamard=(16, 2), col_hadamard=(16, 3))
    rc(x[:, :64], "mxfp4", "nearest", row_hadamard=(32, None), col_hadamard=(64, 1))
    fos = F.NVFP4.replace(four_over_six="mse")                     # Four Over Six, both error metrics
    lowprec.quantize(x, fos, rounding="stochastic", seed=1, backend="triton")
    lowprec.quantize(x, F.UE5M3_FP4.replace(four_over_six="mae", block_2d=True), backend="triton")
    rc(x.to(torch.bfloat16), fos, "nearest", row_hadamard=(16, 2), col_hadamard=(16, 3))
    # Quartet's Gaussian scale (the rfloor rule included) in both kernels; its 3/4 pre-scale only
    # changes the value of S_enc, not the code; MS-EDEN's scale pass in the quantize kernel
    quest = F.MXFP4.replace(scale_statistic="gaussian", scale_rule="rfloor")
    lowprec.quantize(x, quest, backend="triton")
    rc(x[:, :64], quest, "nearest", row_hadamard=(32, None), col_hadamard=(32, 1))
    lowprec.quantize(x.to(torch.bfloat16), "nvfp4", rounding="ms_eden", seed=1, backend="triton")
    for fmt in ("mxfp4", "nvfp4"):
        lowprec.qgemm(lowprec.quantize(x, fmt), lowprec.quantize(x[:32], fmt), backend="triton")
    ops.resolve("nm_mask", "triton")(x.abs())
    ops.resolve("compress_24", "triton")(x, ops.resolve("nm_mask", "triton")(x.abs()))
    for fmt in ("fp32", "nvfp4"):
        m_st, v_st = mom.zeros((16, 64), fmt)
        mom.adam_moments(torch.randn(16, 64, generator=g), m_st, v_st, fmt, mom.MomentScalars.make(1, (0.9, 0.999), 1e-6),
                         seed=1, offset=0, backend="triton")
    w, a, b = torch.randn(64, 48, generator=g), torch.randn(64, 32, generator=g), torch.randn(32, 48, generator=g)
    launch_update(w.clone(), a, b, 0.01, 0.999)
    qa = lowprec.quantize(a, "nvfp4")
    launch_update_q(w.clone(), b, qa, True, 0.01, 0.999)
    launch_project_q(torch.randn(64, 48, generator=g), qa, "left")
    n = 1000
    masked_adam_step(torch.randn(n, generator=g), torch.randn(n, generator=g), torch.zeros(n), torch.zeros(n),
                     torch.rand(n, generator=g) > 0.5, StepScalars.make("adams", 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1e-3, 0.5),
                     backend="triton")


def recorded_launches() -> list:
    from triton.runtime.interpreter import InterpretedFunction
    launches = {}
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        record = describe(self.fn, args, kwargs)
        launches[json.dumps(record, sort_keys=True)] = record
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    with mock.patch.object(InterpretedFunction, "run", run):
        workload()
    return list(launches.values())


def gemm_gpu_tiles(records) -> list:
    """The GEMM as a GPU launches it: bf16 tiles, each autotuned shape, its warps and stages."""
    from lowprec.triton.gemm import GPU_TILES
    bases = {r["constexprs"]["BS"]: r for r in records if r["name"] == "fp4_gemm_kernel"}
    assert sorted(bases) == [16, 32], "the workload runs the GEMM on MXFP4 and NVFP4 blocks"
    out = []
    for base in bases.values():
        for bm, bn, bk, warps, stages in GPU_TILES:
            r = json.loads(json.dumps(base))
            r["constexprs"].update(BM=bm, BN=bn, BK=bk, GROUP_M=8, DOT_BF16=True)
            r["options"] = {"num_warps": warps, "num_stages": stages}
            r["caps"] = list(CAPS) if (bm, bn, bk) == GPU_TILES[0][:3] else [90]
            out.append(r)
    return out


def all_kernels() -> set:
    """Names of the launchable JIT functions (``*_kernel``) in the Triton modules."""
    import importlib
    import pkgutil

    import lowprec.triton
    names = set()
    modules = [f"lowprec.triton.{m.name}" for m in pkgutil.iter_modules(lowprec.triton.__path__)] + ["lowprec.sparse.triton_adam"]
    for name in modules:
        for attr, obj in vars(importlib.import_module(name)).items():
            if attr.endswith("_kernel") and hasattr(obj, "fn"):
                names.add(attr)
    return names


def test_every_triton_kernel_compiles_for_sm80_and_sm90(tmp_path):
    records = recorded_launches()
    launched = {r["name"] for r in records}
    assert all_kernels() <= launched, f"kernels the workload never launched: {sorted(all_kernels() - launched)}"
    # the interpreter's GEMM launches feed tl.dot fp32 tiles; a GPU launches the autotuned bf16 ones
    records = [r for r in records if r["name"] != "fp4_gemm_kernel"] + gemm_gpu_tiles(records)
    path = tmp_path / "launches.json"
    path.write_text(json.dumps(records))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1])] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run([sys.executable, str(HERE / "triton_gpu_compile.py"), str(path)], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert f"compiled {sum(len(r['caps']) for r in records)} of" in done.stdout
