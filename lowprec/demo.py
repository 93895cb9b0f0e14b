"""`lowprec demo`: quantize real tensors with every preset and print error statistics."""

from __future__ import annotations

import json
import math

import torch

from .formats import PRESETS
from .functional import dequantize, quantize
from .sim.corpus import bigram_log_counts, stdlib_docstrings


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """10 log10(||x||^2 / ||x - x_hat||^2)."""
    noise = (x - x_hat).double().pow(2).sum()
    return math.inf if noise == 0 else float(10 * torch.log10(x.double().pow(2).sum() / noise))


def demo_tensors():
    text = stdlib_docstrings()
    g = torch.Generator().manual_seed(0)
    bigram = bigram_log_counts(text)
    outliers = torch.randn(256, 1024, generator=g)
    outliers[:, torch.randint(0, 1024, (8,), generator=g)] *= 50.0      # LLM-like outlier channels
    return {"stdlib bigram log-counts (256x256)": bigram,
            "gaussian + 8 outlier channels (256x1024)": outliers}


def run_demo(json_path=None):
    rows = []
    for tname, x in demo_tensors().items():
        for fname, fmt in PRESETS.items():
            for rounding in ("nearest", "stochastic"):
                q = quantize(x, fmt, rounding=rounding, seed=0)
                xh = dequantize(q)
                rel = float((x - xh).norm() / x.norm())
                rows.append(dict(tensor=tname, format=fname, rounding=rounding,
                                 bits_per_element=fmt.bits_per_element, sqnr_db=sqnr_db(x, xh),
                                 rel_error=rel, max_abs_error=float((x - xh).abs().max())))
    print(f"{'tensor':42s} {'format':11s} {'rounding':10s} {'bits':>5s} {'SQNR dB':>8s} {'rel err':>8s} {'max err':>9s}")
    for r in rows:
        print(f"{r['tensor']:42s} {r['format']:11s} {r['rounding']:10s} {r['bits_per_element']:5.2f} "
              f"{r['sqnr_db']:8.2f} {r['rel_error']:8.4f} {r['max_abs_error']:9.4f}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return rows
