"""Compiles recorded Triton launches for real GPUs, with no GPU present (run by
test_triton_gpu_compile.py in a process without TRITON_INTERPRET, so that ``triton.jit``
gives compilable kernels).

Usage: python triton_gpu_compile.py launches.json  -> one line per specialization (registers
and stack bytes of its cubin, or FAILED and why); exit 1 if any failed.
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
        kernel = triton.compile(ASTSource(fn, record["signature"], record["constexprs"]),
                                target=GPUTarget("cuda", cap, 32), options=dict(record["options"]))
    except Exception as e:  # noqa: BLE001 - every failure is reported, with its kernel and specialization
        return False, f"{record['name']} sm_{cap} {record['constexprs']}: {type(e).__name__}: {str(e)[-2000:]}"
    return True, f"{resource_usage(kernel.asm['cubin'])}  {record['name']} sm_{cap} {record['options']} {record['constexprs']}"


def resource_usage(cubin: bytes) -> str:
    """Registers and stack bytes (spills) of a cubin, from the cuobjdump that ships with Triton."""
    import os
    import subprocess
    import tempfile

    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return "(no cuobjdump)"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    fields = dict(part.split(":", 1) for line in out.splitlines() if "REG:" in line for part in line.split()
                  if ":" in part)
    return f"regs {fields.get('REG', '?'):>3} stack {fields.get('STACK', '?'):>4}"


def main(path: str, workers: int = 2) -> int:
    records = json.loads(open(path).read())
    jobs = [(r, cap) for r in records for cap in r["caps"]]
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(compile_one, jobs))
    failures = [text for ok, text in results if not ok]
    print(f"compiled {len(jobs) - len(failures)} of {len(jobs)} kernel specializations")
    for ok, text in results:
        print(text if ok else f"FAILED {text}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
