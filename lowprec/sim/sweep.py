"""`lowprec sweep`: train the simulator's model under many points of the FP4 design space
(``lowprec.sim.space``), over seeds, in parallel worker processes, and report the loss gap to
bf16 against the estimated cost (``lowprec.sim.cost``), with the Pareto front.

Each run (point, seed) is cached as ``<out>/cache/<key>.json``, the key hashing the point's
full recipe, its layer rule, the training config, the model, the data and the seed, so an
interrupted sweep resumes where it stopped and a changed setting never reuses a stale result.
bf16 is always run: every gap is paired by seed with it. A point's gap gets a paired t-test
over its seeds (two-sided, 5%): "worse" / "better" than bf16, or "within noise".
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from .cost import Machine, relative_cost
from .model import TinyLMConfig
from . import space
from .space import (build_recipe, conversion, expand, high_precision_rule, label, normalize, parse_grid_flags,
                    point_key, schedule_setup)
from .train import TrainConfig

# two-sided 5% critical values of Student's t by degrees of freedom
T_CRIT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
          15: 2.131, 20: 2.086, 30: 2.042}
REFERENCE_BLOCK = "LLaMA-7B block (hidden 4096, MLP 11008), 8192 tokens"


def t_critical(df: int) -> float:
    keys = [k for k in sorted(T_CRIT) if k <= df]
    return T_CRIT[keys[-1]] if keys and df <= 30 else 1.96


def significance(gaps: list) -> str:
    """Paired t-test of the gaps (config − bf16, one per seed) against 0."""
    if len(gaps) < 2:
        return "one seed: no test"
    mean, sd = statistics.mean(gaps), statistics.stdev(gaps)
    if sd == 0:
        return "worse than bf16" if mean > 0 else "better than bf16" if mean < 0 else "equal to bf16"
    t = mean / (sd / len(gaps) ** 0.5)
    if abs(t) < t_critical(len(gaps) - 1):
        return "within noise of bf16"
    return "worse than bf16" if t > 0 else "better than bf16"


def pareto_front(rows: list, x: str = "cost", y: str = "gap") -> list:
    """Labels of the rows no other row beats on both ``x`` and ``y`` (lower is better)."""
    front = []
    for r in rows:
        dominated = any(o[x] <= r[x] and o[y] <= r[y] and (o[x] < r[x] or o[y] < r[y]) for o in rows if o is not r)
        if not dominated:
            front.append(r["label"])
    return front


def reference_layers():
    """(name, in, out) of one LLaMA-7B block's linear layers: the cost axis's default scale."""
    w, ff = 4096, 11008
    return [(f"0.{n}", w, w) for n in ("q", "k", "v", "o")] + [("0.gate", w, ff), ("0.up", w, ff), ("0.down", ff, w)]


# -- one run, in a worker process ------------------------------------------------------------
_CORPUS = {}


def _corpus(data, source):
    from .sources import load_corpus
    key = (tuple(data or ()), source)
    if key not in _CORPUS:
        _CORPUS[key] = load_corpus(data, source)
    return _CORPUS[key]


def linear_names(cfg: TrainConfig) -> list:
    from .sources import build_model, keep_heads_high_precision
    from ..nn import QuantLinear
    model = build_model(cfg.source, cfg.model)
    return [(n, m.in_features if hasattr(m, "in_features") else m.weight.shape[0],
             m.out_features if hasattr(m, "out_features") else m.weight.shape[1])
            for n, m in model.named_modules() if QuantLinear.accepts(m) and keep_heads_high_precision(m, n)]


def run_task(point: dict, seed: int, cfg: TrainConfig, data, path: str, threads: int) -> dict:
    from .train import train_once
    torch.set_num_threads(threads)
    names = [n for n, _, _ in linear_names(cfg)]
    result = train_once(conversion(point, names), seed, cfg, _corpus(data, cfg.source), name=label(point),
                        setup=schedule_setup(point, cfg.steps))
    record = {"point": point, "label": label(point), "seed": seed, "val_loss": result.val_loss,
              "final_loss": result.final_loss, "losses": result.losses, "skipped": result.skipped_layers}
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(record))
    os.replace(tmp, path)                      # atomic: a killed sweep never leaves half a record
    return record


# -- the sweep --------------------------------------------------------------------------------
def sweep(points: list, seeds: list, cfg: TrainConfig, out: Path, data=None, workers: int = 1, progress=True,
          cost_at: str = "reference", machine: Machine = Machine(), threads_per_run: int = 1) -> dict:
    """Run every (point, seed) not in the cache, ``workers`` at a time. Each run uses
    ``threads_per_run`` torch threads whatever ``workers`` is: the thread count changes the
    order of fp32 sums, so fixing it (and keying the cache on it) makes a resumed sweep compute
    exactly what an uninterrupted one does."""
    from tqdm.auto import tqdm
    out = Path(out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    unique = {}
    for p in map(normalize, points):                # the same point twice is one configuration
        unique.setdefault(json.dumps(p, sort_keys=True), p)
    points = list(unique.values())
    if not any(p["format"] == "bf16" and p["high_layers"] == "head" for p in points):
        points = [normalize({"format": "bf16"})] + points
    valid, invalid = [], []
    for p in points:                      # a combination the formats refuse is reported, not run
        try:
            build_recipe(p)
            valid.append(p)
        except ValueError as e:
            invalid.append((label(p), str(e)))
    points = valid
    context = {"train": dataclasses.asdict(cfg), "data": sorted(map(str, data or ())), "version": 1,
               "threads": threads_per_run}
    tasks, records = [], []
    for p in points:
        for s in seeds:
            path = out / "cache" / f"{point_key(p, {**context, 'seed': s})}.json"
            if path.exists():
                records.append(json.loads(path.read_text()))
            else:
                tasks.append((p, s, str(path)))
    cached = len(records)
    threads = threads_per_run
    t0 = time.time()
    with tqdm(total=len(tasks), disable=not progress, desc="sweep", unit="run") as bar:
        if workers <= 1:
            for p, s, path in tasks:
                records.append(run_task(p, s, cfg, data, path, threads))
                bar.update(1)
        else:
            import multiprocessing as mp
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(run_task, p, s, cfg, data, path, threads) for p, s, path in tasks]
                for f in as_completed(futures):
                    records.append(f.result())
                    bar.update(1)
    tokens = 8192 if cost_at == "reference" else cfg.batch_size * cfg.model.seq_len
    model_layers = linear_names(cfg)
    names = [n for n, _, _ in model_layers]
    dead = {label(p): zero_gradient_layers(p, cfg, data, names) for p in points}
    rows = summarize(points, records, seeds, model_layers, cost_at, tokens, machine, dead)
    front = pareto_front([r for r in rows if not r["zero_gradient_layers"]])
    for r in rows:
        r["pareto"] = r["label"] in front
    return {"rows": rows, "records": records, "pareto": front, "ran": len(tasks), "cached": cached, "invalid": invalid,
            "seconds": time.time() - t0, "context": context,
            "cost_scale": REFERENCE_BLOCK if cost_at == "reference" else f"the simulated model, {tokens} tokens",
            "machine": dataclasses.asdict(machine)}


def zero_gradient_layers(point: dict, cfg: TrainConfig, data=None, names=None) -> list:
    """Converted layers whose weight gradient is exactly zero on a training batch at
    initialization: the recipe's quantizers flush the whole gradient (e.g. E4M3-scaled blocks
    without a tensor scale, whose smallest scale is larger than the gradients' blocks need).
    Such a run trains only the unconverted parameters, and its loss says nothing about the
    recipe's accuracy; the sweep marks it and keeps it off the Pareto front."""
    import torch.nn.functional as F
    from .sources import build_model, keep_heads_high_precision
    from ..convert import convert_model, converted_modules
    torch.manual_seed(0)
    names = names if names is not None else [n for n, _, _ in linear_names(cfg)]
    model = convert_model(build_model(cfg.source, cfg.model), conversion(point, names),
                          module_filter_fn=keep_heads_high_precision)
    x, y = _corpus(data, cfg.source).batch("train", cfg.batch_size, cfg.model.seq_len,
                                            torch.Generator().manual_seed(0))
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    modules = dict(model.named_modules())
    return [n for n in converted_modules(model)
            if getattr(modules[n], "weight", None) is not None and modules[n].weight.grad is not None
            and not bool(modules[n].weight.grad.any())]


def summarize(points, records, seeds, model_layers, cost_at, tokens, machine, dead=None) -> list:
    """One row per point. Its cost: with ``cost_at="model"`` each simulated layer at its own
    shape; with ``"reference"`` the recipe's cost on the reference block, mixed with bf16 (1.0)
    by the share of the simulated model's linear FLOPs its layer rule keeps in high precision."""
    by = {}
    for r in records:
        if r["seed"] in seeds:
            by.setdefault(r["label"], {})[r["seed"]] = r
    base = by[label({"format": "bf16"})]
    names = [n for n, _, _ in model_layers]
    rows = []
    for p in points:
        lab = label(p)
        runs = by.get(lab, {})
        vals = [runs[s]["val_loss"] for s in seeds if s in runs]
        gaps = [runs[s]["val_loss"] - base[s]["val_loss"] for s in seeds if s in runs and s in base]
        recipe = build_recipe(p)
        keep = high_precision_rule(p, names)
        cost = _cost(recipe, keep, model_layers, cost_at, tokens, machine)
        if p.get("late_switch"):             # the last fraction of the steps runs a bf16 forward
            from ..schedule import high_precision_forward
            late = _cost(high_precision_forward(recipe, "bf16"), keep, model_layers, cost_at, tokens, machine)
            cost = (1 - p["late_switch"]) * cost + p["late_switch"] * late
        rows.append({"label": lab, "point": p, "seeds": len(vals), "val_loss": statistics.mean(vals),
                     "val_loss_std": statistics.stdev(vals) if len(vals) > 1 else None,
                     "gap": statistics.mean(gaps), "gap_std": statistics.stdev(gaps) if len(gaps) > 1 else None,
                     "significance": significance(gaps), "cost": cost,
                     "zero_gradient_layers": len((dead or {}).get(lab, []))})
        if rows[-1]["zero_gradient_layers"]:
            rows[-1]["significance"] += (f"; DEGENERATE: {rows[-1]['zero_gradient_layers']} quantized layers get "
                                         "all-zero weight gradients (they never train)")
    rows.sort(key=lambda r: (r["cost"], r["gap"]))
    return rows


def _cost(recipe, keep, model_layers, cost_at, tokens, machine) -> float:
    if cost_at == "model":
        return relative_cost(model_layers, tokens, lambda n: None if keep(n) else recipe, machine)
    total = sum(k * n for _, k, n in model_layers)
    kept = sum(k * n for name, k, n in model_layers if keep(name)) / total
    return (1 - kept) * relative_cost(reference_layers(), tokens, lambda n: recipe, machine) + kept


def print_rows(rows):
    w = max(len(r["label"]) for r in rows)
    print(f"{'config':{w}s} {'seeds':>5s} {'val loss':>16s} {'gap to bf16':>18s} {'cost':>6s}  pareto  significance")
    for r in rows:
        val = f"{r['val_loss']:.4f}" + (f" ± {r['val_loss_std']:.4f}" if r["val_loss_std"] is not None else "")
        gap = f"{r['gap']:+.4f}" + (f" ± {r['gap_std']:.4f}" if r["gap_std"] is not None else "")
        print(f"{r['label']:{w}s} {r['seeds']:5d} {val:>16s} {gap:>18s} {r['cost']:6.3f}  "
              f"{'  *   ' if r['pareto'] else '      '}  {r['significance']}")


def plot(rows, path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    dead = [r for r in rows if r["zero_gradient_layers"]]
    rest = [r for r in rows if not r["pareto"] and not r["zero_gradient_layers"]]
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["cost"])
    ax.errorbar([r["cost"] for r in rest], [r["gap"] for r in rest], yerr=[r["gap_std"] or 0 for r in rest],
                fmt="o", color="0.6", ms=4, lw=0.8, label="configurations")
    ax.errorbar([r["cost"] for r in front], [r["gap"] for r in front], yerr=[r["gap_std"] or 0 for r in front],
                fmt="o-", color="tab:red", ms=6, lw=1.5, label="Pareto front")
    if dead:
        ax.scatter([r["cost"] for r in dead], [r["gap"] for r in dead], marker="x", color="k", s=30,
                   label="degenerate: some layers get zero gradients")
    for r in front:
        ax.annotate(r["label"], (r["cost"], r["gap"]), fontsize=6, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("estimated step cost of the linear layers, relative to bf16 (cost model)")
    ax.set_ylabel("validation loss gap to bf16 (mean ± sd over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def add_arguments(p):
    p.add_argument("--spec", default=None, help="JSON file: {grid: {knob: [values]}, fixed: {...}, points: [{...}] "
                                                 "(extra points), random: N, seeds: [...], plus any training flag}")
    p.add_argument("--grid", nargs="*", default=None, help="knob=v1,v2 ... (see lowprec.sim.space)")
    p.add_argument("--fixed", nargs="*", default=None, help="knob=value applied to every point")
    p.add_argument("--random", type=int, default=None, help="draw this many points of the grid")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel runs (default: one per core)")
    p.add_argument("--threads-per-run", type=int, default=1,
                   help="torch threads of each run (part of the cache key: results do not depend on --workers)")
    p.add_argument("--model", default=None)
    p.add_argument("--data", nargs="+", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--cost-at", default="reference", choices=["reference", "model"],
                   help="layer shapes of the cost axis: a LLaMA-7B block (default) or the simulated model")
    p.add_argument("--out", default="lowprec_runs/sweep")
    p.add_argument("--no-progress", action="store_true")


def settings(args) -> dict:
    """Flags over the spec file over the defaults."""
    s = {"grid": {"format": ["nvfp4", "ue5m3"], "hadamard": [0, 16]}, "fixed": {}, "points": [], "random": None,
         "seeds": [0],
         "model": "builtin", "data": None, "steps": 200, "tokens": None, "batch_size": 16, "seq_len": 64,
         "d_model": 64, "layers": 2, "lr": 3e-3}
    if args.spec:
        spec = json.loads(Path(args.spec).read_text())
        unknown = sorted(set(spec) - set(s))
        if unknown:
            raise ValueError(f"{args.spec}: unknown keys {unknown}; a spec takes {sorted(s)}")
        s.update(spec)
    for k in ("random", "seeds", "model", "data", "steps", "tokens", "batch_size", "seq_len", "d_model", "layers",
              "lr"):
        v = getattr(args, k)
        if v is not None:
            s[k] = v
    if args.grid is not None:
        s["grid"] = parse_grid_flags(args.grid)
    if args.fixed is not None:
        s["fixed"] = {k: v[0] for k, v in parse_grid_flags(args.fixed).items()}
    return s


def run(args) -> dict:
    s = settings(args)
    heads = max(1, s["d_model"] // 16)
    tiny = TinyLMConfig(d_model=s["d_model"], n_layers=s["layers"], n_heads=heads, d_ff=4 * s["d_model"],
                        seq_len=s["seq_len"])
    steps = s["steps"] if s["tokens"] is None else max(1, -(-s["tokens"] // (s["batch_size"] * s["seq_len"])))
    cfg = TrainConfig(steps=steps, batch_size=s["batch_size"], lr=s["lr"], model=tiny, source=s["model"])
    points = expand(s["grid"], s["fixed"], s["random"]) + [space.normalize(p) for p in s["points"]]
    out = Path(args.out)
    result = sweep(points, s["seeds"], cfg, out, s["data"], args.workers, not args.no_progress, args.cost_at,
                   threads_per_run=args.threads_per_run)
    print(f"\n{len(result['rows'])} configurations x {len(s['seeds'])} seeds: {result['ran']} runs, "
          f"{result['cached']} from the cache, {result['seconds']:.0f} s; model {s['model']}, {steps} steps; "
          f"cost at {result['cost_scale']}")
    print_rows(result["rows"])
    for r in result["rows"]:
        if r["zero_gradient_layers"]:
            print(f"degenerate (off the Pareto front): {r['label']}: {r['zero_gradient_layers']} quantized layers "
                  "get all-zero weight gradients at initialization")
    for lab, why in result["invalid"]:
        print(f"not run: {lab}: {why}")
    from ..bench.harness import environment
    (out / "sweep.json").write_text(json.dumps({"settings": s, "rows": result["rows"], "pareto": result["pareto"],
                                                "runs": result["records"], "invalid": result["invalid"], "cost_scale": result["cost_scale"],
                                                "machine": result["machine"], "environment": environment("cpu")},
                                               indent=1, default=str) + "\n")
    title = f"{s['model']}, {steps} steps, seeds {s['seeds']}; cost at {result['cost_scale']}"
    plotted = plot(result["rows"], out / "sweep_pareto.png", title)
    print(f"wrote {out / 'sweep.json'}" + (f" and {out / 'sweep_pareto.png'}" if plotted else
                                             " (install matplotlib for the plot)"))
    return result
