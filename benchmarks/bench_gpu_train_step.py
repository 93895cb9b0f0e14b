"""A training step of a converted LLaMA-style model against the same model with nn.Linear in
bf16 (issue target on H100/H200: converted step at most 1.1x the bf16 step for the MXFP4 and
NVFP4 recipes), with peak memory, and one linear layer's fprop split into its parts.

The model: ``--layers`` blocks of RMSNorm, causal attention (q, k, v, o projections,
``scaled_dot_product_attention``) and a SwiGLU MLP (gate, up, down; intermediate 8/3 x width
rounded to 256), bf16 parameters, a linear head-free loss (mean square of the output), so
every GEMM of the step is a block's linear layer or attention. Each recipe converts a fresh
copy; ``gemm_backend`` is the recipe's default ("auto": the FP4 kernel path on CUDA) unless
``--gemm-backend`` says otherwise. Each row names the kernels its layers ran (recorded), so a
row that silently fell back to fp32 matmuls cannot pass for a fast one.

Per-GEMM split (one width x width layer, ``--tokens`` rows): the Hadamard transform, the
quantization of X and W to codes, and the FP4 GEMM, each timed alone.

Usage: python benchmarks/bench_gpu_train_step.py [--width 2048 4096] [--layers 2] [--tokens 4096]
       [--recipes mxfp4 nvfp4 ue5m3 nvfp4_4over6 quartet quartet2] [--repeats 10] [--device auto|cuda|cpu]
(--device cpu with TRITON_INTERPRET=1, --gemm-backend kernels and a tiny width is a smoke run.)
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import lowprec
from lowprec.bench.gpu import bench_device, finish
from lowprec.bench.harness import time_fn


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        inter = -(-int(width * 8 / 3) // 256) * 256
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(width), nn.RMSNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(width, inter, bias=False), nn.Linear(width, inter, bias=False)
        self.down = nn.Linear(inter, width, bias=False)

    def forward(self, x):                      # x: (batch, seq, width)
        b, s, w = x.shape
        h = self.norm1(x)
        q, k, v = (lin(h).view(b, s, self.heads, w // self.heads).transpose(1, 2) for lin in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, w)
        x = x + self.o(a)
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def build(width: int, layers: int, device: str) -> nn.Module:
    torch.manual_seed(0)
    heads = max(1, width // 128)
    return nn.Sequential(*(Block(width, heads) for _ in range(layers))).to(device=device, dtype=torch.bfloat16)


def step_fn(model, x):
    def step():
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
    return step


def bench_model(name, model, x, device, repeats):
    from lowprec.execution import record_kernels, record_quantizers
    step = step_fn(model, x)
    step()                                         # compile / autotune outside the timing
    with record_kernels() as calls, record_quantizers() as quantizers:
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time_fn(step, repeats=repeats, warmup=1, device=device)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None
    kernels = sorted({k for _, k in calls}) or ["torch (nn.Linear)"]
    x_paths = sorted({h for _, h in quantizers})
    return dict(model=name, step_ms=t["median_s"] * 1e3, peak_MiB=peak, kernels="+".join(kernels),
                x_quantizer="; ".join(x_paths) or "-")


def gemm_split(recipe, width, tokens, device, repeats):
    """fprop of one width x width layer: transform, quantize X and W to codes, FP4 GEMM."""
    from lowprec.autograd import _fp4_gemm, _transform, plan_for, quantize_codes, slot_offsets
    plan = plan_for(recipe)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(tokens, width, device=device, generator=g).to(torch.bfloat16)
    w = (torch.randn(width, width, device=device, generator=g) / width ** 0.5).to(torch.bfloat16)
    rng = torch.tensor([7, 0], dtype=torch.int64)
    offsets, _ = slot_offsets(tokens, width, width, plan)
    had, impls = plan.hadamard[0], plan.hadamard_impls
    x_t = _transform(x, had, -1, 0, 0, impls=impls)
    w_t = _transform(w, had, -1, 0, 0, impls=impls)
    qx = quantize_codes(x_t, plan.operands[0], rng, offsets[0], plan.backend)
    qw = quantize_codes(w_t, plan.operands[1], rng, offsets[1], plan.backend)
    parts = {"hadamard (X)": (lambda: _transform(x, had, -1, 0, 0, impls=impls)) if had[0] else None,
             "quantize X": lambda: quantize_codes(x_t, plan.operands[0], rng, offsets[0], plan.backend),
             "quantize W": lambda: quantize_codes(w_t, plan.operands[1], rng, offsets[1], plan.backend),
             "fp4 gemm": lambda: _fp4_gemm("fprop", qx, qw, False, False),
             "bf16 matmul (peer)": lambda: x @ w.t()}
    rows = []
    for part, fn in parts.items():
        if fn is None:
            continue
        t = time_fn(fn, repeats=repeats, warmup=2, device=device)
        rows.append(dict(recipe=recipe.name, width=width, tokens=tokens, part=part, median_ms=t["median_s"] * 1e3))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4096, help="batch x sequence per step (sequence 1024)")
    ap.add_argument("--recipes", nargs="+", default=["mxfp4", "nvfp4", "ue5m3", "nvfp4_4over6", "quartet", "quartet2"])
    ap.add_argument("--gemm-backend", default=None, choices=[None, "auto", "kernels", "simulate"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = bench_device(args.device)
    seq = min(1024, args.tokens)
    step_rows, split_rows = [], []
    for width in args.width:
        x = torch.randn(args.tokens // seq, seq, width, device=device).to(torch.bfloat16)
        base = bench_model("bf16 nn.Linear", build(width, args.layers, device), x, device, args.repeats)
        base.update(width=width, vs_bf16=1.0)
        step_rows.append(base)
        for name in args.recipes:
            over = {} if args.gemm_backend is None else {"gemm_backend": args.gemm_backend}
            recipe = lowprec.recipes.get(name, **over)
            model = lowprec.convert_model(build(width, args.layers, device), recipe)
            row = bench_model(name, model, x, device, args.repeats)
            row.update(width=width, vs_bf16=row["step_ms"] / base["step_ms"])
            row["meets_1.1x"] = row["vs_bf16"] <= 1.1
            step_rows.append(row)
            split_rows.extend(gemm_split(recipe, width, args.tokens, device, args.repeats))
            del model
    print("per-GEMM split (fprop of one width x width layer):")
    for r in split_rows:
        print(f"  {r['recipe']:>8} width {r['width']:>5}  {r['part']:<20} {r['median_ms']:.3f} ms")
    return finish("gpu_train_step", step_rows, ["model", "width", "step_ms", "vs_bf16", "peak_MiB", "kernels", "x_quantizer"],
                  device, {"target": "converted step <= 1.1x the bf16 step (MXFP4 / NVFP4 recipes)"},
                  gemm_split=split_rows, layers=args.layers, tokens=args.tokens)


if __name__ == "__main__":
    main()
