"""Training-step time of the `lowprec simulate` model under each recipe, over its bf16 step,
on this CPU (the quantizers run on --backend, default auto = C++ when built).

Usage: python benchmarks/bench_sim_step.py [--steps 20] [--backend auto] [--profile nvfp4]
       [--source benchmarks/configs/llama256] [--recipes bf16 nvfp4 quartet2]
"""

import argparse

import lowprec
from lowprec.bench.harness import print_table, write_results
from lowprec.sim.data import ByteCorpus
from lowprec.sim.model import TinyLMConfig
from lowprec.sim.timing import step_times


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--profile", default=None, help="print a torch.profiler table for this recipe")
    ap.add_argument("--source", default="builtin", help="the model, as `lowprec simulate --model` takes it")
    ap.add_argument("--recipes", nargs="+", default=None, help="training presets to time (default: all; bf16 "
                    "is always included, the baseline)")
    args = ap.parse_args()
    cfg = TinyLMConfig()
    corpus = ByteCorpus()
    names = lowprec.recipes.TRAINING_PRESETS if args.recipes is None else ["bf16"] + [
        r for r in args.recipes if r != "bf16"]
    recipes = {name: lowprec.recipes.get(name, backend=args.backend) for name in names}
    medians = step_times(recipes, args.steps, corpus, cfg, args.batch_size, source=args.source)
    rows = [dict(recipe=name, backend=args.backend, step_ms=1e3 * t) for name, t in medians.items()]
    base = next(r["step_ms"] for r in rows if r["recipe"] == "bf16")
    for r in rows:
        r["over_bf16"] = r["step_ms"] / base
    print_table(rows, ["recipe", "backend", "step_ms", "over_bf16"])
    tag = "" if args.source == "builtin" else "_" + args.source.rstrip("/").split("/")[-1]
    print(f"wrote {write_results(f'sim_step_{args.backend}_cpu{tag}', rows, extra={'model': str(cfg), 'source': args.source, 'batch': args.batch_size})}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        recipe = lowprec.recipes.get(args.profile, backend=args.backend)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step_times({args.profile: recipe}, 3, corpus, cfg, args.batch_size, source=args.source)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
