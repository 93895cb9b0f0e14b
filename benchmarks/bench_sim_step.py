"""Training-step time of the `lowprec simulate` model under each recipe, over its bf16 step,
on this CPU (the quantizers run on --backend, default auto = C++ when built).

Usage: python benchmarks/bench_sim_step.py [--steps 20] [--backend auto] [--profile nvfp4]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import lowprec
from lowprec.bench.harness import print_table, write_results
from lowprec.sim.data import ByteCorpus
from lowprec.sim.model import TinyLM, TinyLMConfig, keep_head_high_precision


class Trainer:
    """One recipe's converted model, optimizer and batch stream; ``step()`` times one step."""

    def __init__(self, recipe, corpus, cfg, batch):
        torch.manual_seed(0)
        self.model = lowprec.convert_model(TinyLM(cfg), recipe, module_filter_fn=keep_head_high_precision)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.g = torch.Generator().manual_seed(0)
        self.corpus, self.cfg, self.batch = corpus, cfg, batch

    def step(self) -> float:
        x, y = self.corpus.batch("train", self.batch, self.cfg.seq_len, self.g)
        t0 = time.perf_counter()
        loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def step_times(recipes: dict, steps, corpus, cfg, batch) -> dict:
    """Median step time per recipe. The recipes take their steps in turn (round robin), so a
    slow spell of a shared machine lands on all of them rather than on whichever ran then."""
    trainers = {name: Trainer(r, corpus, cfg, batch) for name, r in recipes.items()}
    times = {name: [] for name in recipes}
    for i in range(steps + 2):
        for name, t in trainers.items():
            dt = t.step()
            if i >= 2:
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--profile", default=None, help="print a torch.profiler table for this recipe")
    args = ap.parse_args()
    cfg = TinyLMConfig()
    corpus = ByteCorpus()
    recipes = {name: lowprec.recipes.get(name, backend=args.backend) for name in lowprec.recipes.TRAINING_PRESETS}
    medians = step_times(recipes, args.steps, corpus, cfg, args.batch_size)
    rows = [dict(recipe=name, backend=args.backend, step_ms=1e3 * t) for name, t in medians.items()]
    base = next(r["step_ms"] for r in rows if r["recipe"] == "bf16")
    for r in rows:
        r["over_bf16"] = r["step_ms"] / base
    print_table(rows, ["recipe", "backend", "step_ms", "over_bf16"])
    print(f"wrote {write_results(f'sim_step_{args.backend}_cpu', rows, extra={'model': str(cfg), 'batch': args.batch_size})}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        recipe = lowprec.recipes.get(args.profile, backend=args.backend)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step_times({args.profile: recipe}, 3, corpus, cfg, args.batch_size)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
