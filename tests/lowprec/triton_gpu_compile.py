"""Compiles recorded Triton launches for real GPUs, with no GPU present (run by
test_triton_gpu_compile.py in a process without TRITON_INTERPRET, so that ``triton.jit``
gives compilable kernels).

Usage: python triton_gpu_compile.py launches.json  -> exit 1 and one line per failure.
Each record: module, name, signature {param: type or "constexpr"}, constexprs, options, caps.
"""

import importlib
import json
import sys
from concurrent.futures import ProcessPoolExecutor


def compile_one(job):
    record, cap = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = getattr(importlib.import_module(record["module"]), record["name"])
    try:
        triton.compile(ASTSource(fn, record["signature"], record["constexprs"]),
                       target=GPUTarget("cuda", cap, 32), options=dict(record["options"]))
    except Exception as e:  # noqa: BLE001 - every failure is reported, with its kernel and specialization
        return f"{record['name']} sm_{cap} {record['constexprs']}: {type(e).__name__}: {str(e)[-2000:]}"
    return None


def main(path: str, workers: int = 2) -> int:
    records = json.loads(open(path).read())
    jobs = [(r, cap) for r in records for cap in r["caps"]]
    with ProcessPoolExecutor(workers) as pool:
        failures = [f for f in pool.map(compile_one, jobs) if f]
    print(f"compiled {len(jobs) - len(failures)} of {len(jobs)} kernel specializations")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
