"""`lowprec simulate`: train the tiny LM under each recipe and seed, on the CPU."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..recipe import get
from .model import TinyLMConfig
from .sources import build_model, check_fit, load_corpus
from .report import plot_losses, print_summary, summarize, write_json
from .timing import step_times
from .train import TrainConfig, train_once

DEFAULT_RECIPES = ("bf16", "mxfp8", "mxfp4", "nvfp4", "ue5m3")


def add_arguments(p):
    p.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES),
                   help="recipe presets to compare, or full recipes (lowprec.full_recipes: nvfp4_full, ...)")
    p.add_argument("--model", default="builtin",
                   help="'builtin', a transformers config (.json, or a folder with config.json), or "
                        "'package.module:factory' (ids -> logits); see lowprec.sim.sources")
    p.add_argument("--data", nargs="+", default=None,
                   help="text files or folders (default: the built-in corpus); tokenized with the model's tokenizer "
                        "if its folder has one, byte-level otherwise")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--tokens", type=int, default=None, help="training length in tokens (overrides --steps)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--estimator", default=None, help="override every recipe's gradient estimator")
    p.add_argument("--out", default="lowprec_runs/simulate", help="folder for JSON and PNG")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--timing-steps", type=int, default=20,
                   help="timed steps per recipe, interleaved across recipes, for the speed columns")


def _full_of(name: str):
    from ..full_recipe import PRESETS
    return PRESETS.get(name)


class _AttachSchedule:
    """Setup for train_once: a full recipe's late switch, attached to the run's optimizer."""

    def __init__(self, full, steps: int):
        self.full, self.steps = full, steps

    def __call__(self, model, optimizer):
        self.full.attach(model, self.steps, optimizer)


def _run_spec(name: str, estimator, probe, steps: int):
    """(recipe labelling the run, what convert_model takes, setup or None) for a recipe preset
    or a full recipe (``lowprec.full_recipes``: BF16 ends and head, late precision switch)."""
    from ..full_recipe import linear_layer_names
    full = _full_of(name)
    if full is None:
        recipe = get(name, **({"estimator": estimator} if estimator else {}))
        return recipe, recipe, None
    if estimator:
        raise ValueError(f"--estimator does not apply to the full recipe {name!r}; give its base recipe instead")
    label = full.recipe.replace(name=full.name)
    return label, full.conversion(linear_layer_names(probe)), _AttachSchedule(full, steps)


def run(args) -> dict:
    from tqdm.auto import tqdm
    model = TinyLMConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_ff=args.d_ff,
                         seq_len=args.seq_len)
    steps = args.steps if args.tokens is None else max(1, -(-args.tokens // (args.batch_size * args.seq_len)))
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, model=model, source=args.model)
    corpus = load_corpus(args.data, args.model)
    probe = build_model(args.model, model)
    check_fit(corpus, probe, model.seq_len)
    runs = [_run_spec(name, args.estimator, probe, steps) for name in args.recipes]
    recipes = [r for r, _, _ in runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.time()
    total = len(recipes) * len(args.seeds) * cfg.steps
    with tqdm(total=total, disable=args.no_progress, desc="simulate", unit="step") as bar:
        for seed in args.seeds:
            for recipe, conversion, setup in runs:
                bar.set_description(f"{recipe.name} seed {seed}")
                results.append(train_once(conversion, seed, cfg, corpus, progress=bar, name=recipe.name, setup=setup))
    baseline = "bf16" if "bf16" in args.recipes else recipes[0].name
    # the speed columns: a separate interleaved timing pass (lowprec.sim.timing), not the
    # training loop's own clock, which a busy moment of the machine skews for one recipe
    timed = step_times({r.name: conversion for r, conversion, _ in runs}, args.timing_steps, corpus, model,
                       cfg.batch_size, source=args.model)
    rows = summarize(results, baseline, step_times=timed, tokens_per_step=cfg.batch_size * model.seq_len)
    described = model if args.model == "builtin" else args.model
    print(f"\ncorpus: {corpus.description}; "
          f"model {described}; {cfg.steps} steps x {cfg.batch_size} x {model.seq_len} tokens; "
          f"{time.time() - t0:.0f} s total")
    print_summary(rows, baseline)
    config = {"train": dataclasses.asdict(cfg), "recipes": [r.to_dict() for r in recipes], "seeds": args.seeds,
              "full_recipes": {n: _full_of(n).to_dict() for n in args.recipes if _full_of(n)}}
    write_json(out / "simulate.json", rows, results, config)
    title = "tiny LM" if args.model == "builtin" else Path(args.model).name
    plotted = plot_losses(out / "simulate_loss.png", results, f"{title}, {cfg.steps} steps, seeds {args.seeds}")
    print(f"wrote {out / 'simulate.json'}" + (f" and {out / 'simulate_loss.png'}" if plotted else
                                               " (install matplotlib for the plot)"))
    return {"rows": rows, "results": results}
