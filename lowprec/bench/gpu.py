"""Device choice for the GPU kernel benchmarks.

The GPU benchmarks time CUDA and Triton kernels on a GPU. Without one they can still run on
CPU tensors with Triton interpreted (``TRITON_INTERPRET=1``) on tiny shapes: a smoke run that
proves the script works (the tests do this), whose times mean nothing and are marked so.
"""

from __future__ import annotations

import os

import torch


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
