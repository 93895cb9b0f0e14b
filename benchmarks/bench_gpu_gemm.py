"""FP4 GEMM (Triton, from packed E2M1 codes and block scales) against cuBLAS bf16 on the same
shapes (issue target: at least 0.8x cuBLAS's TFLOP/s from 4096 to 16384).

TFLOP/s = 2 M N K / time. Operands are quantized once, outside the timing. Each row also gives
the largest error against the fp32 product of the dequantized operands, relative to that
product's largest magnitude, so a fast wrong kernel cannot pass unseen.

Usage: python benchmarks/bench_gpu_gemm.py [--sizes 4096 8192 16384] [--formats mxfp4 nvfp4]
       [--repeats 20] [--device auto|cuda|cpu]
(--device cpu with TRITON_INTERPRET=1 and a tiny size is a smoke run of the script.)
"""

import argparse
import contextlib

import torch

import lowprec
from lowprec.bench.gpu import bench_device, finish
from lowprec.bench.harness import time_fn


def tflops(m, n, k, seconds) -> float:
    return 2.0 * m * n * k / seconds / 1e12


def bench_size(size, formats, device, repeats) -> list:
    m = n = k = size
    g = torch.Generator(device=device).manual_seed(size)
    a = torch.randn(m, k, device=device, generator=g, dtype=torch.float32).to(torch.bfloat16)
    b = torch.randn(n, k, device=device, generator=g, dtype=torch.float32).to(torch.bfloat16)
    bf16_dtype = torch.bfloat16 if device == "cuda" else torch.float32    # CPU smoke run: fp32 matmul
    a_mm, b_mm = a.to(bf16_dtype), b.to(bf16_dtype)
    t_ref = time_fn(lambda: a_mm @ b_mm.t(), repeats=repeats, warmup=3, device=device)
    peer = tflops(m, n, k, t_ref["median_s"])
    rows = [dict(impl="torch.matmul bf16 (cuBLAS)" if device == "cuda" else "torch.matmul (CPU smoke)",
                 format=None, m=m, n=n, k=k, median_ms=t_ref["median_s"] * 1e3, tflops=peer, vs_cublas=1.0)]
    for fmt in formats:
        qa, qb = lowprec.quantize(a, fmt), lowprec.quantize(b, fmt)
        t = time_fn(lambda: lowprec.qgemm(qa, qb, backend="triton"), repeats=repeats, warmup=3, device=device)
        got = lowprec.qgemm(qa, qb, backend="triton")
        with torch.backends.cuda.matmul.flags(allow_tf32=False) if device == "cuda" else contextlib.nullcontext():
            exact = lowprec.dequantize(qa, torch.float32) @ lowprec.dequantize(qb, torch.float32).t()
        err = float((got - exact).abs().max() / exact.abs().max())
        ours = tflops(m, n, k, t["median_s"])
        rows.append(dict(impl="lowprec-triton fp4 gemm", format=fmt, m=m, n=n, k=k, median_ms=t["median_s"] * 1e3,
                         tflops=ours, vs_cublas=ours / peer, meets_80pct=ours / peer >= 0.8, max_rel_err=err))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384], help="M = N = K")
    ap.add_argument("--formats", nargs="+", default=["mxfp4", "nvfp4"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = bench_device(args.device)
    ok, why = lowprec.ops.backend_status("triton")
    if not ok:
        raise SystemExit(f"the FP4 GEMM is a Triton kernel, and triton is unavailable: {why}")
    rows = []
    for size in args.sizes:
        rows.extend(bench_size(size, args.formats, device, args.repeats))
    return finish("gpu_gemm", rows, ["impl", "format", "m", "median_ms", "tflops", "vs_cublas", "max_rel_err"],
                  device, {})


if __name__ == "__main__":
    main()
