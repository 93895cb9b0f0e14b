"""GPU quantize / dequantize / fake-quantize throughput as a fraction of the measured
device-to-device copy bandwidth (issue target: at least 80%).

Bytes counted are the bytes a kernel must move: quantize reads x and writes packed codes and
block scales; dequantize reads those and writes x's dtype; fake-quantize reads x and writes
x_hat. Glue passes (dtype casts, the tensor-amax pass of NVFP4, nibble packing done outside
the kernel) cost time but add no counted bytes, so they show up as a lower fraction.

Usage: python benchmarks/bench_gpu_quantize.py [--size 16384] [--dtypes bf16 fp32]
       [--backends triton cuda] [--repeats 20] [--device auto|cuda|cpu]
(--device cpu with TRITON_INTERPRET=1 and a tiny --size is a smoke run of the script.)
"""

import argparse

import torch

import lowprec
from lowprec.bench.gpu import bench_device, finish, measure_copy
from lowprec.bench.harness import time_fn

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def quantized_bytes(q) -> int:
    return q.codes.nbytes + q.scales.nbytes


def measure(backend, fmt, rounding, x, device, repeats, copy_gbs) -> list:
    """Rows for quantize, dequantize and fake-quantize of ``x`` on ``backend``."""
    def q_fn():
        return lowprec.quantize(x, fmt, rounding=rounding, seed=0, backend=backend)

    q = q_fn()
    cases = [("quantize", q_fn, x.nbytes + quantized_bytes(q)),
             ("dequantize", lambda: lowprec.dequantize(q, backend=backend), quantized_bytes(q) + x.nbytes),
             ("fake_quantize", lambda: lowprec.fake_quantize(x, fmt, rounding=rounding, seed=0, backend=backend),
              2 * x.nbytes)]
    rows = []
    for op, fn, nbytes in cases:
        t = time_fn(fn, repeats=repeats, warmup=3, device=device)
        gbs = nbytes / t["median_s"] / 1e9
        rows.append(dict(backend=backend, op=op, format=fmt, rounding=rounding, dtype=str(x.dtype).split(".")[-1],
                         shape=list(x.shape), bytes=nbytes, median_ms=t["median_s"] * 1e3, gb_s=gbs,
                         frac_of_copy=gbs / copy_gbs, meets_80pct=gbs / copy_gbs >= 0.8))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="x is size x size")
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    ap.add_argument("--formats", nargs="+", default=["mxfp4", "nvfp4"])
    ap.add_argument("--roundings", nargs="+", default=["nearest", "stochastic"])
    ap.add_argument("--backends", nargs="+", default=["triton", "cuda"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = bench_device(args.device)
    copy = measure_copy(device, args.size, args.repeats)
    rows, notes = [], {}
    for backend in args.backends:
        ok, why = lowprec.ops.backend_status(backend)
        if not ok:
            notes[backend] = f"not measured: {why}"
            continue
        for name in args.dtypes:
            x = torch.randn(args.size, args.size, device=device).to(DTYPES[name])
            for fmt in args.formats:
                for rounding in args.roundings:
                    rows.extend(measure(backend, fmt, rounding, x, device, args.repeats, copy["gb_s"]))
    return finish("gpu_quantize", rows, ["backend", "op", "format", "rounding", "dtype", "median_ms", "gb_s",
                                         "frac_of_copy"], device, notes, copy_bandwidth=copy, size=args.size)


if __name__ == "__main__":
    main()
