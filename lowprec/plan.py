"""Automatic precision plan: which linear layers to keep in higher precision within a budget.

``plan(model, batches, recipe, budget)`` runs fp32 forward/backward passes on ``batches``,
records each linear layer's X, W and dY, and quantizes the layer's six GEMM operands exactly
as ``recipe`` would (``lowprec.diagnose.quantized_gemms``), ``draws`` times with different
stochastic-rounding bits. Per layer and per GEMM (fprop Y = X Wᵀ, dgrad dX = dY W, wgrad
dW = dYᵀ X), with G the fp32 result and Ĝ_k the quantized one of draw k:

    relative L2 error   e = mean_k ||Ĝ_k − G|| / ||G||
    gain                g = <mean_k Ĝ_k, G> / ||G||²          (1: no systematic shrinkage)
    relative bias       b = ||mean_k Ĝ_k − G|| / ||G||        (SR noise averages out as 1/sqrt(draws);
                                                               with nearest rounding b = e)

plus the operand SQNRs. A layer's sensitivity is its largest relative error over the three
GEMMs, averaged over the batches. The plan keeps the most sensitive layers in ``high`` (None:
the layer stays an ``nn.Linear``) while their share of the linear layers' cost stays within
``budget``. The cost of a layer is its weight's element count (its GEMM FLOPs per token), or 1
per layer with ``unit="layers"``. Layers are taken greedily by sensitivity, skipping any that
would overflow the budget. The result's ``recipe_map()`` is what ``convert_model`` takes.
"""

from __future__ import annotations

import copy
import random
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from .diagnose import capture, default_loss, gemm_quality, measure_layer
from .nn import layer_seed
from .recipe import Recipe, get

def _average(rows: list) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


@dataclass(frozen=True)
class PrecisionPlan:
    recipe: Recipe
    budget: float
    unit: str
    high: Optional[Union[str, Recipe]]
    keep: tuple                  # layer names kept in ``high``, most sensitive first
    layers: tuple = field(default=(), compare=False)   # per-layer measurements, most sensitive first

    @property
    def used(self) -> float:
        """The share of the cost the kept layers take."""
        total = sum(r["cost"] for r in self.layers)
        return sum(r["cost"] for r in self.layers if r["layer"] in self.keep) / total if total else 0.0

    def recipe_map(self) -> dict:
        """{layer name: high, ..., "*": recipe} for ``convert_model`` (exact names first)."""
        out = {fnmatch_escape(n): self.high for n in self.keep}
        out["*"] = self.recipe
        return out

    def describe(self) -> str:
        lines = [f"precision plan for {self.recipe.name}: {len(self.keep)} of {len(self.layers)} layers in "
                 f"{getattr(self.high, 'name', self.high) or 'high precision (unconverted)'}, "
                 f"{100 * self.used:.1f}% of the cost (budget {100 * self.budget:.0f}%, unit {self.unit})",
                 f"{'layer':32s} {'cost':>8s} {'score':>7s} {'Y err':>7s} {'dX err':>7s} {'dW err':>7s} "
                 f"{'dX gain':>7s} {'dW gain':>7s} {'dW bias':>7s}  kept"]
        for r in self.layers:
            lines.append(f"{r['layer'][:32]:32s} {r['cost']:8d} {r['score']:7.4f} {r['Y_rel_err']:7.4f} "
                         f"{r['dX_rel_err']:7.4f} {r['dW_rel_err']:7.4f} {r['dX_gain']:7.4f} {r['dW_gain']:7.4f} "
                         f"{r['dW_bias']:7.4f}  {'*' if r['layer'] in self.keep else ''}")
        return "\n".join(lines)


def fnmatch_escape(name: str) -> str:
    """A layer name as an fnmatch pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _fit(names_costs: Iterable, budget_cost: float) -> tuple:
    kept, used = [], 0
    for name, cost in names_costs:
        if used + cost <= budget_cost + 1e-9:
            kept.append(name)
            used += cost
    return tuple(kept)


def candidates(model: nn.Module, recipe: Recipe, module_filter_fn=None) -> dict:
    """{name: weight (out x in)} of the linear layers ``convert_model`` would convert."""
    from .nn import QuantLinear
    out = {}
    for name, m in model.named_modules():
        if not QuantLinear.accepts(m) or (module_filter_fn is not None and not module_filter_fn(m, name)):
            continue
        w = m.weight if type(m) is nn.Linear else m.weight.t()
        if recipe.shape_mismatch(w.shape[1], w.shape[0]) is None:
            out[name] = w
    return out


def plan(model: nn.Module, batches, recipe="nvfp4", budget: float = 0.15, loss_fn: Optional[Callable] = None,
         high: Optional[Union[str, Recipe]] = None, unit: str = "flops", draws: int = 4, seed: int = 0,
         module_filter_fn=None) -> PrecisionPlan:
    """Measure every convertible linear layer's sensitivity to ``recipe`` on ``batches`` and keep
    the most sensitive in ``high`` within ``budget`` (a fraction of the cost; see the module
    docstring). ``batches``: an iterable of model inputs (a tensor, a tuple of positional
    arguments, or a dict of keyword arguments); ``loss_fn(output, batch)`` -> scalar (default:
    the output's ``loss`` field for transformers models, else mean square of the output)."""
    recipe = get(recipe)
    if not 0 <= budget < 1:
        raise ValueError(f"budget is a fraction of the cost in [0, 1), got {budget}")
    if unit not in ("flops", "layers"):
        raise ValueError(f"unit must be 'flops' or 'layers', got {unit!r}")
    from .convert import converted_modules, revert_model
    if converted_modules(model):
        warnings.warn("plan: the model is already converted; planning on its unconverted form (a reverted copy)",
                      stacklevel=2)
        model = revert_model(copy.deepcopy(model))
    names = candidates(model, recipe, module_filter_fn)
    if not names:
        raise ValueError(f"no linear layer of the model can run under {recipe.name!r}")
    per_layer = {n: [] for n in names}
    batches = list(batches)
    if not batches:
        raise ValueError("plan needs at least one batch")
    for batch in batches:
        records = capture(model, (batch,) if torch.is_tensor(batch) else batch, _loss(loss_fn, batch))
        for name in names:
            if name in records:
                x, w, dy = records[name]
                per_layer[name].append(measure_layer(x, w, dy, recipe, layer_seed(seed, name), draws))
    missing = [n for n, rows in per_layer.items() if not rows]
    if missing:
        raise ValueError(f"layers {missing[:4]} got no gradient on these batches: their sensitivity is unknown")
    rows = []
    for name, w in names.items():
        row = {"layer": name, "shape": f"{w.shape[0]}x{w.shape[1]}", "cost": w.numel() if unit == "flops" else 1}
        row.update(_average(per_layer[name]))
        rows.append(row)
    rows.sort(key=lambda r: -r["score"])
    total = sum(r["cost"] for r in rows)
    keep = _fit(((r["layer"], r["cost"]) for r in rows), budget * total)
    return PrecisionPlan(recipe, budget, unit, high, keep, tuple(rows))


def _loss(loss_fn, batch):
    return default_loss if loss_fn is None else (lambda out: loss_fn(out, batch))


def baseline_plan(reference: PrecisionPlan, names: list, kind: str, seed: int = 0) -> PrecisionPlan:
    """The same budget spent another way, to compare a plan with: ``"ends"`` keeps layers from
    both ends of ``names`` (the model's order) alternately, first and last first, the hand
    rule of keeping the first and last blocks in BF16; ``"random"`` keeps a random choice."""
    costs = {r["layer"]: r["cost"] for r in reference.layers}
    order = [n for n in names if n in costs]
    if kind == "ends":
        picked, lo, hi = [], 0, len(order) - 1
        while lo <= hi:
            picked.append(order[lo])
            if hi != lo:
                picked.append(order[hi])
            lo, hi = lo + 1, hi - 1
    elif kind == "random":
        picked = order[:]
        random.Random(seed).shuffle(picked)
    else:
        raise ValueError(f"kind must be 'ends' or 'random', got {kind!r}")
    total = sum(costs.values())
    keep = _fit(((n, costs[n]) for n in picked), reference.budget * total)
    return PrecisionPlan(reference.recipe, reference.budget, reference.unit, reference.high, keep, reference.layers)


def add_arguments(p):
    p.add_argument("--recipe", default="nvfp4")
    p.add_argument("--budget", type=float, default=0.15, help="share of the cost kept in high precision")
    p.add_argument("--unit", default="flops", choices=["flops", "layers"])
    p.add_argument("--high", default=None, help="recipe for the kept layers (default: left unconverted)")
    p.add_argument("--model", default="builtin", help="'builtin' or 'package.module:factory' (as for diagnose)")
    p.add_argument("--batches", type=int, default=2, help="batches of the built-in model to measure on")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="lowprec_runs/plan.json")


def run(args):
    import json
    from pathlib import Path
    from .config_io import to_jsonable
    from .diagnose import builtin_model, load_user_model
    if args.model == "builtin":
        pairs = [builtin_model(args.batch_size, args.seed + i) for i in range(args.batches)]
        model = pairs[0][0]
        batches = [ids for _, ids, _ in pairs]
        losses = {id(ids): fn for _, ids, fn in pairs}
        loss_fn = lambda out, batch: losses[id(batch)](out)        # noqa: E731
        module_filter_fn = lambda m, n: n != "head"                  # noqa: E731  (as simulate converts)
    else:
        model, inputs, fn = load_user_model(args.model)
        batches, loss_fn, module_filter_fn = [inputs], (lambda out, batch: fn(out)), None
    result = plan(model, batches, args.recipe, args.budget, loss_fn=loss_fn, high=args.high, unit=args.unit,
                  draws=args.draws, seed=args.seed, module_filter_fn=module_filter_fn)
    print(result.describe())
    print("convert with: lowprec.convert_model(model, plan.recipe_map())  (kept layers:", ", ".join(result.keep) or
          "none", ")")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"recipe": result.recipe.to_dict(), "budget": result.budget, "unit": result.unit,
                                    "high": to_jsonable(get(result.high)) if result.high else None,
                                    "keep": list(result.keep), "used": result.used, "layers": list(result.layers)},
                                   indent=1) + "\n")
        print(f"wrote {path}")
    return result


__all__ = ["PrecisionPlan", "plan", "baseline_plan", "measure_layer", "gemm_quality", "fnmatch_escape"]
