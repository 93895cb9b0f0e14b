"""The `lowprec` command line."""

from __future__ import annotations

import argparse
import sys


def _sparse_simulate():
    """The sparse package's simulation, when it is installed (lowprec does not depend on it)."""
    try:
        from lowprec.sparse import simulate as sparse_simulate
    except ImportError:
        return None
    return sparse_simulate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lowprec", description="lowprec: low-precision compute engine")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="quantize real tensors with every preset and print error statistics")
    p_demo.add_argument("--json", default=None, help="also write the rows as JSON here")
    sub.add_parser("backends", help="list the backends and why any is unavailable")
    from .sim import simulate
    p_sim = sub.add_parser("simulate", help="train a tiny LM on the CPU under each recipe and compare losses")
    simulate.add_arguments(p_sim)
    from .sim import optimizers as optimizer_sim
    optimizer_sim.add_arguments(p_sim)
    sparse_sim = _sparse_simulate()
    if sparse_sim is not None:
        sparse_sim.add_arguments(p_sim)
    from . import diagnose
    p_diag = sub.add_parser("diagnose", help="per-layer SQNR of a recipe's operands and GEMMs, worst layers first")
    diagnose.add_arguments(p_diag)
    from .sim import sweep as design_sweep
    p_sweep = sub.add_parser("sweep", help="train under many points of the FP4 design space; loss gap vs cost, Pareto front")
    design_sweep.add_arguments(p_sweep)
    from . import plan as precision_plan
    p_plan = sub.add_parser("plan", help="keep the layers most sensitive to a recipe in high precision, within a budget")
    precision_plan.add_arguments(p_plan)
    from .bench import report
    p_bench = sub.add_parser("bench", help="print the recorded benchmark results (benchmarks/results) as tables")
    report.add_arguments(p_bench)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        run_demo(args.json)
    elif args.command == "simulate":
        if getattr(args, "sparse", None) and args.optimizer:
            parser.error("--sparse and --optimizer are separate comparisons; pass one")
        if (getattr(args, "sparse", None) or args.optimizer) and (args.model != "builtin" or args.data or args.tokens):
            parser.error("--model, --data and --tokens apply to the recipe comparison; the --sparse and --optimizer "
                         "comparisons train the built-in model on the built-in corpus")
        if getattr(args, "sparse", None):
            sparse_sim.run(args)
        elif args.optimizer:
            optimizer_sim.run(args)
        else:
            simulate.run(args)
    elif args.command == "bench":
        return report.run(args)
    elif args.command == "diagnose":
        diagnose.run(args)
    elif args.command == "sweep":
        design_sweep.run(args)
    elif args.command == "plan":
        precision_plan.run(args)
    elif args.command == "backends":
        from .ops import BACKENDS, backend_status
        for b in BACKENDS:
            ok, why = backend_status(b)
            print(f"{b:10s} {'available' if ok else 'unavailable'}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
