"""Reference quantize + dequantize throughput (Melem/s) on this CPU, 4096x4096 fp32.

This is the baseline every fast backend is measured against.
Usage: python benchmarks/bench_reference_quantize.py [--size 4096] [--repeats 3]
"""

import argparse

import torch

import lowprec
from lowprec.bench.harness import environment, print_table, time_fn, write_results


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="reference")
    args = ap.parse_args()
    x = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = []
    for fmt in ("mxfp4", "nvfp4"):
        for rounding in ("nearest", "stochastic"):
            def quant():
                return lowprec.quantize(x, fmt, rounding=rounding, seed=0, backend=args.backend)
            q = quant()
            tq = time_fn(quant, repeats=args.repeats)
            td = time_fn(lambda: lowprec.dequantize(q, backend=args.backend), repeats=args.repeats)
            n = x.numel()
            rows.append(dict(backend=args.backend, format=fmt, rounding=rounding, shape=f"{args.size}x{args.size}",
                             quantize_s=tq["median_s"], dequantize_s=td["median_s"],
                             quantize_melem_s=n / tq["median_s"] / 1e6, dequantize_melem_s=n / td["median_s"] / 1e6,
                             roundtrip_melem_s=n / (tq["median_s"] + td["median_s"]) / 1e6))
    print(environment())
    print_table(rows, ["backend", "format", "rounding", "quantize_melem_s", "dequantize_melem_s", "roundtrip_melem_s"])
    path = write_results(f"quantize_{args.backend}_cpu", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
