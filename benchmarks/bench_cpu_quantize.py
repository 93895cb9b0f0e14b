"""CPU quantize + dequantize throughput, 4096x4096 fp32, side by side in one run:
lowprec reference, lowprec C++ (cpp), and torchao's CPU path (torchao.prototype.mx_formats,
optional: skipped with a note when it is not installed). For NVFP4 with MS-EDEN also the C++
element kernel followed by the reference's torch scale pass ("cpp+torch-pass"), which is how
the cpp backend ran MS-EDEN before the pass moved into its kernel.

Usage: python benchmarks/bench_cpu_quantize.py [--size 4096] [--repeats 3]
"""

import argparse
import warnings

import torch

import lowprec
from lowprec.bench.harness import print_table, time_fn, write_results


def torchao_fns(fmt: str):
    """(quantize, dequantize) closures of torchao's CPU path, or None when unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.prototype.mx_formats.mx_tensor import MXTensor
            from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    except Exception as e:  # noqa: BLE001 - any import failure means "not measurable here"
        return None, f"torchao not importable: {type(e).__name__}: {e}"
    if fmt == "mxfp4":
        return (lambda x: MXTensor.to_mx(x, torch.float4_e2m1fn_x2, 32),
                lambda q: q.dequantize(torch.float32)), "MXTensor.to_mx (floor, emulated)"
    return (lambda x: NVFP4Tensor.to_nvfp4(x, 16, per_tensor_scale=per_tensor_amax_to_scale(x.abs().amax())),
            lambda q: q.dequantize(torch.float32)), "NVFP4Tensor.to_nvfp4 (with per-tensor scale)"


def torch_pass_ms_eden(x, fmt):
    """MS-EDEN as the cpp backend computed it before its kernel did: the cpp round-to-nearest
    kernel for the elements, then reference/ms_eden.py's torch pass for the scales."""
    from lowprec import ops
    from lowprec.reference import ms_eden
    rtn = ops.implementations("quantize")["cpp"]
    return ms_eden.quantize(rtn, ops.implementations("random_bytes")["cpp"], x, fmt, 0, 0, False, "propagate", None)


def throughput_row(impl, fmt, rounding, n, tq, td) -> dict:
    """Melem/s from the median times (the headline), and the round trip from the best times:
    a fresh 64 MiB output costs page faults whose price varies run to run on a shared machine
    (transparent huge pages or not), which the median keeps and the best run shows without."""
    return dict(impl=impl, format=fmt, rounding=rounding,
                quantize_melem_s=n / tq["median_s"] / 1e6,
                dequantize_melem_s=n / td["median_s"] / 1e6,
                roundtrip_melem_s=n / (tq["median_s"] + td["median_s"]) / 1e6,
                roundtrip_best_melem_s=n / (tq["min_s"] + td["min_s"]) / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    x = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0))
    n = x.numel()
    rows, notes = [], {}
    for fmt in ("mxfp4", "nvfp4"):
        for rounding in ("nearest", "stochastic") + (("ms_eden",) if fmt == "nvfp4" else ()):
            for backend in ("reference", "cpp") + (("cpp+torch-pass",) if rounding == "ms_eden" else ()):
                if backend.split("+")[0] not in lowprec.available_backends():
                    notes[backend] = "not built"
                    continue
                if backend == "cpp+torch-pass":
                    def quant():
                        return torch_pass_ms_eden(x, lowprec.formats.get_format(fmt))
                else:
                    def quant():
                        return lowprec.quantize(x, fmt, rounding=rounding, seed=0, backend=backend)
                q = quant()
                tq = time_fn(quant, repeats=args.repeats)
                td = time_fn(lambda: lowprec.dequantize(q, backend=backend.split("+")[0]), repeats=args.repeats)
                rows.append(throughput_row(f"lowprec-{backend}", fmt, rounding, n, tq, td))
            if rounding == "nearest":
                (fns, why) = torchao_fns(fmt)
                if fns is None:
                    notes["torchao"] = why
                    continue
                quant, deq = fns
                q = quant(x)
                tq = time_fn(lambda: quant(x), repeats=args.repeats)
                td = time_fn(lambda: deq(q), repeats=args.repeats)
                notes[f"torchao-{fmt}"] = why
                rows.append(throughput_row("torchao", fmt, rounding, n, tq, td))
    for r in rows:
        peer = next((p for p in rows if p["impl"] == "torchao" and p["format"] == r["format"]), None)
        r["roundtrip_vs_torchao"] = r["roundtrip_melem_s"] / peer["roundtrip_melem_s"] if peer else None
        r["best_vs_torchao"] = r["roundtrip_best_melem_s"] / peer["roundtrip_best_melem_s"] if peer else None
    print_table(rows, ["impl", "format", "rounding", "quantize_melem_s", "dequantize_melem_s",
                       "roundtrip_melem_s", "roundtrip_vs_torchao", "best_vs_torchao"])
    for k, v in notes.items():
        print(f"note: {k}: {v}")
    print("torchao's CPU path has no stochastic rounding to compare against.")
    print(f"wrote {write_results('cpu_quantize_vs_torchao', rows, extra={'notes': notes, 'shape': [args.size] * 2})}")


if __name__ == "__main__":
    main()
