"""`lowprec simulate --sparse ...`: 2:4 methods on the built-in tiny LM and corpus.

Per seed: train the dense model for ``--pretrain-steps`` (the dense checkpoint), then from
that same checkpoint run every method for ``--steps`` more steps on the same batches:
dense (keeps training), oneshot (magnitude 2:4 once, then fine-tune with the mask fixed),
srste, ast, cast.  Sparse models are scored after ``export`` (exactly 2:4 weights); the
output head stays dense, as in the papers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lowprec.sim.data import ByteCorpus
from lowprec.sim.model import TinyLM, TinyLMConfig
from lowprec.sim.train import TrainConfig, evaluate, run_steps

from .configs import ASTConfig, CASTConfig, SRSTEConfig
from .export import export, sparse_linears
from .masks import flip_rate, fraction_nm, magnitude_mask
from .train import SparseTrainer

METHODS = ("dense", "oneshot", "srste", "ast", "cast")


def add_arguments(p):
    p.add_argument("--sparse", nargs="+", default=None, metavar="METHOD",
                   help=f"compare 2:4 methods instead of recipes: any of {' '.join(METHODS)}")
    p.add_argument("--pretrain-steps", type=int, default=200, help="dense steps before the sparse phase")
    p.add_argument("--sparse-lr", type=float, default=1e-3, help="peak lr of the sparse phase")
    p.add_argument("--ast-lam", type=float, default=0.05, help="AST masked-decay λ at this model's scale")
    p.add_argument("--cast-lam", type=float, default=2e-3, help="AdamS λ at this model's scale")
    p.add_argument("--ast-alpha", type=float, default=1 / 3,
                   help="AST's CE weight α (1 = no distillation; the teacher is the dense checkpoint)")
    p.add_argument("--ast-temperature", type=float, default=2.0)
    p.add_argument("--cast-eta", type=float, default=1 / 3, help="CAST's KL weight η (0 = no distillation)")


def _keep_head(module, name):
    return name != "head"


def _config(method: str, args, steps: int):
    if method == "srste":
        return SRSTEConfig(decay=2e-4, mask_interval=1)
    if method == "oneshot":
        return SRSTEConfig(decay=0.0, mask_interval=0)          # mask fixed at the one-shot magnitude prune
    if method == "ast":
        return ASTConfig(mask_interval=10, lam=args.ast_lam, ramp_steps=max(1, steps // 4), slorb_k=16,
                         alpha=args.ast_alpha, temperature=args.ast_temperature)
    if method == "cast":
        return CASTConfig(lam=args.cast_lam, mask_interval=10, eta=args.cast_eta)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


@dataclass
class SparseRun:
    method: str
    seed: int
    losses: list
    val_loss: float
    flip_rate_vs_initial: float
    fraction_exactly_24: float
    step_time_s: float

    def to_dict(self):
        return dataclasses.asdict(self)


def _initial_masks(model):
    return {n: magnitude_mask(m.weight) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "head" and m.in_features % 4 == 0}


def run_method(method, seed, ckpt, cfg: TrainConfig, corpus, args, progress=None) -> SparseRun:
    torch.manual_seed(seed)
    model = TinyLM(cfg.model)
    model.load_state_dict(ckpt)
    init_masks = _initial_masks(model)
    g = torch.Generator().manual_seed(1000 + seed)
    phase = dataclasses.replace(cfg, lr=args.sparse_lr, warmup=max(1, cfg.steps // 20))
    if method == "dense":
        opt = torch.optim.AdamW(model.parameters(), lr=phase.lr, weight_decay=0.0)
        step_fn = None
    else:
        trainer = SparseTrainer(model, _config(method, args, cfg.steps), total_steps=cfg.steps, lr=phase.lr,
                                module_filter_fn=_keep_head, seed=seed)
        model, opt = trainer.model, trainer.optimizer
        step_fn = trainer.step
    losses, t_train = run_steps(model, opt, corpus, phase, g, step_fn=step_fn, progress=progress)
    if method == "dense":
        final, flips, frac = model, 0.0, 0.0
    else:
        final = export(model, opt if method == "cast" else None, low_rank="keep")   # the trained function, 2:4
        layers = sparse_linears(final)
        frac = statistics.mean(float(fraction_nm(m.weight.detach()) == 1.0) for _, m in layers)
        base = {n[: -len(".sparse")] if n.endswith(".sparse") else n: m for n, m in layers}
        flips = statistics.mean(flip_rate(m.weight.detach() != 0, init_masks[n]) for n, m in base.items())
    val = evaluate(final, corpus, cfg, seed)
    return SparseRun(method, seed, losses, val, flips, frac, t_train / cfg.steps)


def pretrain(seed, cfg: TrainConfig, corpus, progress=None):
    torch.manual_seed(seed)
    model = TinyLM(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run_steps(model, opt, corpus, cfg, torch.Generator().manual_seed(seed), progress=progress)
    return copy.deepcopy(model.state_dict())


def summarize(runs):
    by = {}
    for r in runs:
        by.setdefault(r.method, []).append(r)
    dense = {r.seed: r.val_loss for r in by.get("dense", [])}
    rows = []
    for method, rs in by.items():
        gaps = [r.val_loss - dense[r.seed] for r in rs if r.seed in dense]
        rows.append({"method": method, "seeds": len(rs),
                     "val_loss": statistics.mean(r.val_loss for r in rs),
                     "gap_to_dense": statistics.mean(gaps) if gaps else None,
                     "gap_std": statistics.stdev(gaps) if len(gaps) > 1 else None,   # one seed: no spread
                     "flip_rate_vs_initial": statistics.mean(r.flip_rate_vs_initial for r in rs),
                     "fraction_exactly_24": statistics.mean(r.fraction_exactly_24 for r in rs),
                     "step_time_s": statistics.mean(r.step_time_s for r in rs)})
    return rows


def print_table(rows):
    print(f"{'method':8s} {'seeds':>5s} {'val loss':>9s} {'gap to dense':>18s} {'flip vs init':>12s} "
          f"{'exactly 2:4':>11s} {'step ms':>8s}")
    for r in rows:
        gap = ("n/a" if r["gap_to_dense"] is None else f"{r['gap_to_dense']:+.4f}" +
               (f" ± {r['gap_std']:.4f}" if r["gap_std"] is not None else ""))
        print(f"{r['method']:8s} {r['seeds']:5d} {r['val_loss']:9.4f} {gap:>18s} {r['flip_rate_vs_initial']:12.4f} "
              f"{r['fraction_exactly_24']:11.2f} {1e3 * r['step_time_s']:8.1f}")


def plot(path: Path, runs, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from lowprec.sim.report import _moving_average
    # AST and CAST train on a distillation objective (CE mixed with a KL to the teacher): its
    # values are not cross-entropies, so they get their own axis; validation cross-entropy,
    # the one number every method shares, gets the third panel.
    distilled = {"ast", "cast"}
    fig, (ax_ce, ax_kd, ax_val) = plt.subplots(1, 3, figsize=(16, 5))
    colors = {}
    for r in runs:
        c = colors.setdefault(r.method, f"C{len(colors)}")
        y = _moving_average(r.losses, 10)
        ax = ax_kd if r.method in distilled else ax_ce
        ax.plot(range(len(y)), y, color=c, alpha=0.8, label=r.method if r.seed == runs[0].seed else None)
    ax_ce.set_ylabel("training cross-entropy, moving average of 10")
    ax_ce.set_title("methods trained on cross-entropy", fontsize=10)
    ax_kd.set_ylabel("training distillation loss, moving average of 10")
    ax_kd.set_title("own objectives: AST α CE + (1-α) T² KL, CAST η KL + (1-η) CE", fontsize=9)
    ax_val.set_title("the comparable number", fontsize=10)
    for ax in (ax_ce, ax_kd):
        ax.set_xlabel("step of the sparse phase")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    methods = list(dict.fromkeys(r.method for r in runs))
    vals = [[r.val_loss for r in runs if r.method == m] for m in methods]
    means = [sum(v) / len(v) for v in vals]
    ax_val.bar(methods, means, color=[colors[m] for m in methods], alpha=0.8)
    for i, v in enumerate(vals):
        ax_val.scatter([i] * len(v), v, color="k", s=12, zorder=3)      # each seed
    lo = min(min(v) for v in vals)
    ax_val.set_ylim(lo - 0.05 * abs(lo), max(max(v) for v in vals) + 0.02 * abs(lo))
    ax_val.set_ylabel("validation cross-entropy (dots: seeds)")
    ax_val.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(args) -> dict:
    from tqdm.auto import tqdm
    unknown = [m for m in args.sparse if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown sparse methods {unknown}; expected any of {METHODS}")
    model = TinyLMConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_ff=args.d_ff,
                         seq_len=args.seq_len)
    pre = TrainConfig(steps=args.pretrain_steps, batch_size=args.batch_size, lr=args.lr, model=model)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.sparse_lr, model=model)
    methods = list(dict.fromkeys(["dense"] + list(args.sparse)))
    corpus = ByteCorpus()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, t0 = [], time.time()
    total = len(args.seeds) * (pre.steps + len(methods) * cfg.steps)
    with tqdm(total=total, disable=args.no_progress, desc="sparse", unit="step") as bar:
        for seed in args.seeds:
            bar.set_description(f"dense checkpoint seed {seed}")
            ckpt = pretrain(seed, pre, corpus, bar)
            for method in methods:
                bar.set_description(f"{method} seed {seed}")
                runs.append(run_method(method, seed, ckpt, cfg, corpus, args, bar))
    rows = summarize(runs)
    print(f"\ntiny LM {model}; dense checkpoint after {pre.steps} steps, then {cfg.steps} steps x "
          f"{cfg.batch_size} x {model.seq_len} tokens per method; seeds {args.seeds}; {time.time() - t0:.0f} s")
    print_table(rows)
    payload = {"summary": rows, "runs": [r.to_dict() for r in runs],
               "config": {"pretrain": dataclasses.asdict(pre), "sparse_phase": dataclasses.asdict(cfg),
                          "methods": methods, "seeds": args.seeds, "ast_lam": args.ast_lam,
                          "cast_lam": args.cast_lam, "ast_alpha": args.ast_alpha,
                          "ast_temperature": args.ast_temperature, "cast_eta": args.cast_eta}}
    (out / "simulate_sparse.json").write_text(json.dumps(payload, indent=1) + "\n")
    plotted = plot(out / "simulate_sparse_loss.png", runs, f"2:4 methods from one dense checkpoint, seeds {args.seeds}")
    print(f"wrote {out / 'simulate_sparse.json'}" + (f" and {out / 'simulate_sparse_loss.png'}" if plotted else ""))
    return {"rows": rows, "runs": runs}
