"""Device choice for the GPU kernel benchmarks.

The GPU benchmarks time CUDA and Triton kernels on a GPU. Without one they can still run on
CPU tensors with Triton interpreted (``TRITON_INTERPRET=1``) on tiny shapes: a smoke run that
proves the script works (the tests do this), whose times mean nothing and are marked so.
"""

from __future__ import annotations

import os

import torch

from .harness import copy_bandwidth, print_table, write_results


def bench_device(requested: str = "auto") -> str:
    """"cuda" when asked for or when a GPU is visible; "cpu" only as a smoke run (see above)."""
    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device must be auto, cuda or cpu, got {requested!r}")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise SystemExit("--device cuda: torch sees no CUDA GPU on this machine")
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("no CUDA GPU here. A smoke run on the CPU needs TRITON_INTERPRET=1 set before "
                         "Python starts, and tiny sizes; its times mean nothing")
    return "cpu"


def run_note(device: str) -> dict:
    """Extra JSON fields that say what kind of run produced the numbers."""
    if device == "cpu":
        return {"smoke_run": True, "note": "CPU tensors with Triton interpreted: proves the script, "
                                           "the times are not kernel timings"}
    return {"smoke_run": False}


def measure_copy(device: str, size: int, repeats: int) -> dict:
    """The copy roof for a size x size fp32 working set (at least 1 MiB), printed."""
    copy = copy_bandwidth(device, max(4 * size * size, 1 << 20), repeats=repeats)
    print(f"device-to-device copy: {copy['gb_s']:.0f} GB/s (read + write)")
    return copy


def finish(name: str, rows: list, columns: list, device: str, notes: dict, **extra) -> list:
    """Print the table and notes, write benchmarks/results/<name>.json, return the rows."""
    print_table(rows, columns)
    for k, v in notes.items():
        print(f"note: {k}: {v}")
    path = write_results(name, rows, device=device, extra={"notes": notes, **extra, **run_note(device)})
    print(f"wrote {path}")
    return rows
