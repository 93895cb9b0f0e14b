"""Timing and result files. A benchmark prints a table and writes JSON that records the
device, commit and library versions next to the numbers."""

from __future__ import annotations

import json
import os
import importlib.metadata
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict:
    """Median and min time (seconds) of ``fn()`` over ``repeats`` runs after ``warmup``: wall
    time on a CPU, the time between CUDA events on a GPU (the kernels, launch overlap included)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if str(device).startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def copy_bandwidth(device: str, nbytes: int, repeats: int = 20) -> dict:
    """Device-to-device copy bandwidth: GB/s = (bytes read + bytes written) / time of
    ``dst.copy_(src)`` on ``nbytes`` of fp32, the roof a memory-bound kernel is held to."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), repeats=repeats, warmup=3, device=device)
    return {"bytes": 2 * src.nbytes, "median_s": t["median_s"], "gb_s": 2 * src.nbytes / t["median_s"] / 1e9,
            "best_gb_s": 2 * src.nbytes / t["min_s"] / 1e9}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def environment(device: str = "cpu") -> dict:
    env = {"device": torch.cuda.get_device_name() if str(device).startswith("cuda") else _cpu_name(),
           "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version(), "commit": _commit(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if str(device).startswith("cuda"):
        env["cuda"] = torch.version.cuda
        env["capability"] = "sm_%d%d" % torch.cuda.get_device_capability()
    # the packages a result depends on: a transformers model built from a config draws its
    # initial weights through transformers' own init code, which changes between versions
    for name in ("triton", "transformers", "peft", "numpy"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return env


def results_dir(out_dir=None) -> Path:
    """Where results live: ``out_dir``, else $LOWPREC_BENCH_DIR, else the checkout's
    benchmarks/results."""
    return Path(out_dir or os.environ.get("LOWPREC_BENCH_DIR", Path(__file__).resolve().parents[2] / "benchmarks" / "results"))


def write_results(name: str, rows: list, device: str = "cpu", out_dir=None, extra=None) -> Path:
    out_dir = results_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(device), "rows": rows}
    if extra:
        payload.update(extra)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def print_table(rows: list, columns: list) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
