"""The automatic precision plan against the hand rules at the same budget, on the simulator.

A LLaMA-style model (a transformers config) is trained under the recipe on every linear layer,
and under the same recipe with a share of the linear FLOPs kept in high precision, chosen by:

- ``plan``: lowprec.plan.plan, measured on two batches at initialization (before training,
  as a user would run it);
- ``ends``: layers from both ends of the model alternately (the rule "first and last blocks in
  BF16" at this budget);
- ``random``: a random choice (a different one per seed).

Each runs over the seeds; the table gives the validation-loss gap to bf16, paired by seed.

Usage: python benchmarks/bench_plan.py [--model benchmarks/configs/llama256] [--recipe nvfp4]
       [--budget 0.15] [--steps 100] [--seeds 0 1 2] [--workers 2]
"""

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F


def conversions(args, seed):
    from lowprec.plan import baseline_plan, plan
    from lowprec.sim.data import ByteCorpus
    from lowprec.sim.model import TinyLMConfig
    from lowprec.sim.sources import build_model, keep_heads_high_precision
    torch.manual_seed(seed)
    model = build_model(args.model, TinyLMConfig(seq_len=args.seq_len))
    corpus = ByteCorpus()
    g = torch.Generator().manual_seed(100 + seed)
    batches = [corpus.batch("train", args.batch_size, args.seq_len, g) for _ in range(2)]
    targets = {id(x): y for x, y in batches}
    p = plan(model, [x for x, _ in batches], args.recipe, args.budget, seed=seed,
             loss_fn=lambda out, x: F.cross_entropy(out.flatten(0, 1), targets[id(x)].flatten()),
             module_filter_fn=keep_heads_high_precision)
    names = [n for n, _ in model.named_modules() if n in {r["layer"] for r in p.layers}]
    return {"plan": p, "ends": baseline_plan(p, names, "ends"), "random": baseline_plan(p, names, "random", seed)}


def run_one(args, name, seed):
    import lowprec  # noqa: F401
    from lowprec.sim.data import ByteCorpus
    from lowprec.sim.model import TinyLMConfig
    from lowprec.sim.train import TrainConfig, train_once
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, model=TinyLMConfig(seq_len=args.seq_len),
                      source=args.model)
    kept, used = [], 0.0
    if name in ("bf16", "all"):
        conv = "bf16" if name == "bf16" else args.recipe
    else:
        p = conversions(args, seed)[name]
        conv, kept, used = p.recipe_map(), list(p.keep), p.used
    r = train_once(conv, seed, cfg, ByteCorpus(), name=name)
    return {"name": name, "seed": seed, "val_loss": r.val_loss, "kept": kept, "used": used}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="benchmarks/configs/llama256")
    ap.add_argument("--recipe", default="nvfp4")
    ap.add_argument("--budget", type=float, default=0.15)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    names = ["bf16", "all", "plan", "ends", "random"]
    import multiprocessing as mp
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        runs = list(pool.map(run_one, *zip(*[(args, n, s) for n in names for s in args.seeds])))
    base = {r["seed"]: r["val_loss"] for r in runs if r["name"] == "bf16"}
    rows = []
    for n in names:
        rs = [r for r in runs if r["name"] == n]
        gaps = [r["val_loss"] - base[r["seed"]] for r in rs]
        rows.append({"choice": n, "gap_to_bf16": statistics.mean(gaps), "gap_std": statistics.stdev(gaps),
                     "high_precision_share": statistics.mean(r["used"] for r in rs) if n not in ("bf16", "all")
                     else (1.0 if n == "bf16" else 0.0),
                     "kept_seed0": next(r["kept"] for r in rs if r["seed"] == args.seeds[0])})
    from lowprec.bench.harness import print_table, write_results
    print_table(rows, ["choice", "gap_to_bf16", "gap_std", "high_precision_share"])
    for r in rows[2:]:
        print(f"{r['choice']}: kept (seed {args.seeds[0]}): {', '.join(r['kept_seed0'])}")
    path = write_results("plan_llama256", rows, extra={"settings": vars(args), "runs": runs})
    print("wrote", path)


if __name__ == "__main__":
    main()
