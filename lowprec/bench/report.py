"""`lowprec bench`: the recorded benchmark results (benchmarks/results/*.json) as tables,
each under the device, commit and date it was measured on."""

from __future__ import annotations

import json
from pathlib import Path

from .harness import print_table, results_dir

ENVIRONMENT_KEYS = ("device", "capability", "cuda", "torch", "triton", "commit", "date")


def load(path: Path) -> dict:
    payload = json.loads(path.read_text())
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise ValueError(f"{path} is not a benchmark result (no 'rows' list)")
    return payload


def columns(rows: list) -> list:
    """Every key of the rows, in first-seen order."""
    seen = {}
    for r in rows:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


def show(payload: dict, name: str) -> None:
    env = payload.get("environment", {})
    where = ", ".join(f"{k} {env[k]}" for k in ENVIRONMENT_KEYS if k in env)
    print(f"== {payload.get('benchmark', name)} ({where})")
    if payload.get("smoke_run"):
        print(f"   smoke run: {payload.get('note', 'not a timing')}")
    if payload["rows"]:
        print_table(payload["rows"], columns(payload["rows"]))
    else:
        print("   (no rows)")
    for k, v in (payload.get("notes") or {}).items():
        print(f"   note: {k}: {v}")
    print()


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", help="result names (file stems, e.g. gpu_gemm); default: all")
    parser.add_argument("--dir", default=None, help="results folder (default: $LOWPREC_BENCH_DIR or benchmarks/results)")


def run(args) -> int:
    folder = results_dir(args.dir)
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise SystemExit(f"no benchmark results in {folder}: run a script under benchmarks/ first")
    by_name = {p.stem: p for p in paths}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        raise SystemExit(f"no result named {', '.join(unknown)} in {folder}; there are: {', '.join(by_name)}")
    for name in args.names or list(by_name):
        show(load(by_name[name]), name)
    return 0
