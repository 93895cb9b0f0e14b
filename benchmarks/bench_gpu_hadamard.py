"""GPU block Hadamard: the fused Triton Hadamard + amax + quantize (row-wise and column-wise
outputs in one pass) as a fraction of the device-to-device copy bandwidth (issue target for
stochastic rounding: at least 70%), and the plain transform against Dao-AILab's
``fast-hadamard-transform`` where it is installed.

Bytes counted: the fused op reads x once and writes two packed quantized copies (codes and
block scales); a plain transform reads x and writes y. A second pass (the tensor amax of
NVFP4) or packing outside the kernel costs time but adds no counted bytes.

Usage: python benchmarks/bench_gpu_hadamard.py [--size 16384] [--sizes-n 16 32 64 128]
       [--repeats 20] [--device auto|cuda|cpu]
(--device cpu with TRITON_INTERPRET=1 and a tiny --size is a smoke run of the script.)
"""

import argparse

import torch

import lowprec
from lowprec.bench.gpu import bench_device, finish, measure_copy
from lowprec.bench.harness import time_fn


def fast_hadamard_transform():
    """``hadamard_transform(x, scale)`` of the fast-hadamard-transform package, or (None, why)."""
    try:
        from fast_hadamard_transform import hadamard_transform
    except Exception as e:  # noqa: BLE001 - any import failure means "not measurable here"
        return None, f"fast_hadamard_transform not importable: {type(e).__name__}: {e}"
    return hadamard_transform, "fast_hadamard_transform.hadamard_transform on (-1, n) rows"


def row(op, impl, n, fmt, rounding, x, nbytes, t, copy_gbs, **more) -> dict:
    gbs = nbytes / t["median_s"] / 1e9
    return dict(op=op, impl=impl, n=n, format=fmt, rounding=rounding, shape=list(x.shape), bytes=nbytes,
                median_ms=t["median_s"] * 1e3, gb_s=gbs, frac_of_copy=gbs / copy_gbs, **more)


def fused_rows(x, ns, formats, roundings, device, repeats, copy_gbs) -> list:
    from lowprec.ops import resolve
    hq = resolve("hadamard_quantize", "triton", x.device)
    rows = []
    for n in ns:
        for fmt in formats:
            if n % lowprec.get_format(fmt).block_size:
                continue
            for rounding in roundings:
                def fn():
                    return hq(x, n, fmt, rounding=rounding, seed=0, hadamard_seed=1)
                q_row, q_col = fn()
                nbytes = x.nbytes + sum(q.codes.nbytes + q.scales.nbytes for q in (q_row, q_col))
                t = time_fn(fn, repeats=repeats, warmup=3, device=device)
                frac = nbytes / t["median_s"] / 1e9 / copy_gbs
                rows.append(row("hadamard_quantize", "lowprec-triton (fused)", n, fmt, rounding, x, nbytes, t,
                                copy_gbs, meets_target=frac >= (0.7 if rounding == "stochastic" else 0.8)))
    return rows


def transform_rows(x, ns, device, repeats, copy_gbs, notes) -> list:
    fht, why = fast_hadamard_transform()
    notes["fast-hadamard-transform"] = why
    impl = f"lowprec-{lowprec.ops.auto_backend('hadamard', x.device)}"
    rows = []
    for n in ns:
        t = time_fn(lambda: lowprec.hadamard(x, n), repeats=repeats, warmup=3, device=device)
        ours = lowprec.hadamard(x, n)
        rows.append(row("hadamard", impl, n, None, None, x, 2 * x.nbytes, t, copy_gbs))
        if fht is None or device != "cuda":
            continue
        rows_n = x.reshape(-1, n)
        t = time_fn(lambda: fht(rows_n, n ** -0.5), repeats=repeats, warmup=3, device=device)
        diff = float((fht(rows_n, n ** -0.5).reshape(x.shape) - ours).abs().max())
        rows.append(row("hadamard", "fast-hadamard-transform", n, None, None, x, 2 * x.nbytes, t, copy_gbs,
                        max_abs_diff_vs_lowprec=diff))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="x is size x size fp32")
    ap.add_argument("--sizes-n", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--formats", nargs="+", default=["nvfp4", "mxfp4"])
    ap.add_argument("--roundings", nargs="+", default=["stochastic", "nearest"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = bench_device(args.device)
    copy = measure_copy(device, args.size, args.repeats)
    x = torch.randn(args.size, args.size, device=device)
    notes = {}
    ok, why = lowprec.ops.backend_status("triton")
    rows = fused_rows(x, args.sizes_n, args.formats, args.roundings, device, args.repeats, copy["gb_s"]) if ok else []
    if not ok:
        notes["triton"] = f"fused Hadamard + quantize not measured: {why}"
    rows += transform_rows(x, args.sizes_n, device, args.repeats, copy["gb_s"], notes)
    return finish("gpu_hadamard", rows, ["op", "impl", "n", "format", "rounding", "median_ms", "gb_s", "frac_of_copy"],
                  device, notes, copy_bandwidth=copy, size=args.size)


if __name__ == "__main__":
    main()
