"""`lowprec simulate --optimizer adamw galore galore-lowbit ...`: the tiny LM trained in
full precision under each optimizer; loss, measured optimizer-state bytes and step time.

galore: rank d_model / 4 (the paper's rank ratio), refresh every 50 steps, scale 0.25,
embeddings, norms and the head on plain AdamW; galore-lowbit: the same with 8-bit (MXFP8)
moments, stochastically rounded; galore-fp4: NVFP4 moments; galore-rsvd: randomized refresh.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import torch

from ..galore import GaLoreAdamW, galore_param_groups, optimizer_state_bytes
from .data import ByteCorpus
from .model import TinyLM, TinyLMConfig
from .train import TrainConfig, evaluate, run_steps

OPTIMIZERS = ("adamw", "galore", "galore-lowbit", "galore-fp4", "galore-rsvd")


def add_arguments(p):
    p.add_argument("--optimizer", nargs="+", default=None, metavar="NAME",
                   help=f"compare optimizers instead of recipes: any of {' '.join(OPTIMIZERS)}")
    p.add_argument("--galore-rank", type=int, default=None, help="default: d_model / 4")
    p.add_argument("--galore-gap", type=int, default=50)
    p.add_argument("--galore-scale", type=float, default=0.25)


def make_optimizer(name: str, model, cfg: TrainConfig, args):
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name not in OPTIMIZERS:
        raise SystemExit(f"unknown optimizer {name!r}; expected any of {OPTIMIZERS}")
    extra = {"galore-lowbit": {"state_format": "mxfp8"}, "galore-fp4": {"state_format": "nvfp4"},
             "galore-rsvd": {"refresh": "randomized"}}.get(name, {})
    rank = args.galore_rank or cfg.model.d_model // 4
    groups = galore_param_groups(model, rank=rank, update_proj_gap=args.galore_gap, scale=args.galore_scale, **extra)
    return GaLoreAdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8, seed=0)


def train(name, seed, cfg: TrainConfig, corpus, args, progress=None) -> dict:
    torch.manual_seed(seed)
    model = TinyLM(cfg.model)
    opt = make_optimizer(name, model, cfg, args)
    losses, t_train = run_steps(model, opt, corpus, cfg, torch.Generator().manual_seed(seed), progress=progress)
    tail = max(1, cfg.steps // 10)
    return {"optimizer": name, "seed": seed, "losses": losses, "final_loss": sum(losses[-tail:]) / tail,
            "val_loss": evaluate(model, corpus, cfg, seed), "state_bytes": optimizer_state_bytes(opt),
            "step_time_s": t_train / cfg.steps}


def run(args) -> dict:
    from tqdm.auto import tqdm
    model = TinyLMConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_ff=args.d_ff,
                         seq_len=args.seq_len)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, model=model)
    names = list(dict.fromkeys(args.optimizer))
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad:
        raise SystemExit(f"unknown optimizers {bad}; expected any of {OPTIMIZERS}")
    corpus = ByteCorpus()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tqdm(total=len(names) * len(args.seeds) * cfg.steps, disable=args.no_progress, unit="step") as bar:
        for seed in args.seeds:
            for name in names:
                bar.set_description(f"{name} seed {seed}")
                runs.append(train(name, seed, cfg, corpus, args, bar))
    rows = []
    base = {r["seed"]: r for r in runs if r["optimizer"] == names[0]}
    for name in names:
        rs = [r for r in runs if r["optimizer"] == name]
        rows.append({"optimizer": name, "seeds": len(rs), "val_loss": statistics.mean(r["val_loss"] for r in rs),
                     "gap": statistics.mean(r["val_loss"] - base[r["seed"]]["val_loss"] for r in rs),
                     "state_bytes": statistics.mean(r["state_bytes"] for r in rs),
                     "step_time_s": statistics.mean(r["step_time_s"] for r in rs)})
    b0 = rows[0]
    print(f"\ntiny LM {model}; {cfg.steps} steps x {cfg.batch_size} x {model.seq_len} tokens; seeds {args.seeds}; "
          f"GaLore rank {args.galore_rank or model.d_model // 4}, gap {args.galore_gap}, scale {args.galore_scale}")
    print(f"{'optimizer':14s} {'val loss':>9s} {'gap to ' + names[0]:>16s} {'state KiB':>10s} {'x state':>8s} "
          f"{'step ms':>8s} {'x time':>7s}")
    for r in rows:
        print(f"{r['optimizer']:14s} {r['val_loss']:9.4f} {r['gap']:+16.4f} {r['state_bytes'] / 1024:10.1f} "
              f"{r['state_bytes'] / b0['state_bytes']:8.3f} {1e3 * r['step_time_s']:8.2f} "
              f"{r['step_time_s'] / b0['step_time_s']:7.2f}")
    payload = {"summary": rows, "runs": runs, "config": {"train": dataclasses.asdict(cfg), "optimizers": names,
                                                         "seeds": args.seeds, "galore_rank": args.galore_rank,
                                                         "galore_gap": args.galore_gap,
                                                         "galore_scale": args.galore_scale}}
    (out / "simulate_optimizers.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out / 'simulate_optimizers.json'}")
    return {"rows": rows, "runs": runs}
