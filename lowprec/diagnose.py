"""`lowprec diagnose`: where does a recipe lose most?

Runs one fp32 forward/backward, records each linear layer's input X, weight W and output
gradient dY, then, per layer, quantizes the six operands exactly as the recipe would
(Hadamard domain, block axis, rounding) and reports
  - the SQNR of each operand (x vs Q(x)), and
  - the SQNR of each GEMM output (fprop Y, dgrad dX, wgrad dW) against fp32, dX and dW as the
    layer computes them (the forward estimator's factor applied; with
    ``backward_operands="forward"`` from the forward's quantized operands),
ranking layers by their worst GEMM SQNR: the blind spots to keep in higher precision.
SQNR = 10 log10(||ref||^2 / ||ref - approx||^2) in dB.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .autograd import SLOTS, _padded_tokens, _to_input_domain, _transform, plan_for, quantize_operand, slot_offsets
from .nn import _is_conv1d, layer_seed
from .recipe import Recipe, get


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (ref.double() - approx.double()).pow(2).sum()
    signal = ref.double().pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(signal / noise)) if signal > 0 else -math.inf


def capture(model: nn.Module, inputs, loss_fn):
    """{name: (X 2-D, W out x in, dY 2-D)} for every nn.Linear / Conv1D."""
    records, handles = {}, []
    for name, m in model.named_modules():
        if type(m) is nn.Linear or _is_conv1d(m):
            def fwd_hook(mod, args, out, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                w = (mod.weight if type(mod) is nn.Linear else mod.weight.t()).detach().float()
                records[name] = [x, w, None]
                if out.requires_grad:
                    out.register_hook(lambda g, name=name: records[name].__setitem__(
                        2, g.detach().reshape(-1, g.shape[-1]).float()))
            handles.append(m.register_forward_hook(fwd_hook))
    try:
        if isinstance(inputs, dict):            # keyword inputs (transformers: input_ids=..., labels=...)
            out = model(**inputs)
        else:
            out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
        loss_fn(out).backward()
    finally:
        for h in handles:
            h.remove()
    return {k: v for k, v in records.items() if v[2] is not None}


def quantized_gemms(x, w, dy, recipe: Recipe, seed: int = 0, offset: int = 0):
    """The recipe's six operands of one layer, fp32 and fake-quantized (each in its GEMM's
    transformed domain, Philox bits from ``offset``), and its three quantized GEMM outputs.
    -> (operands, quantized, (Y_hat, dX_hat, dW_hat))."""
    plan = plan_for(recipe)
    tokens, (out_f, in_f) = x.shape[0], w.shape
    offsets, _ = slot_offsets(tokens, in_f, out_f, plan)
    rng = torch.tensor([seed, offset])
    had = plan.hadamard
    pad = _padded_tokens(tokens, had[2][0]) - tokens
    dy_w = F.pad(dy, (0, 0, 0, pad)) if pad else dy
    fwd = [_transform(x, had[0], -1, seed, 0), _transform(w, had[0], -1, seed, 0)]
    fq = [quantize_operand(t, plan.operands[i], rng, offsets[i], plan.estimator, plan.backend)
          for i, t in enumerate(fwd)]
    # the backward GEMMs' sources: X and W, or (Recipe.backward_operands="forward") the
    # forward's quantized X_q and W_q, in the fprop domain
    w_src, x_src = (fq[1][0], fq[0][0]) if plan.from_forward else (w, x)
    x_w = F.pad(x_src, (0, 0, 0, pad)) if pad else x_src
    operands = fwd + [  # each in its GEMM's transformed domain
        _transform(dy, had[1], -1, seed, 1), _transform(w_src, had[1], 0, seed, 1),
        _transform(dy_w, had[2], 0, seed, 2), _transform(x_w, had[2], 0, seed, 2)]
    quantized = [fq[0][0], fq[1][0]] + [quantize_operand(t, plan.operands[i + 2], rng, offsets[i + 2], "ste",
                                                         plan.backend)[0] for i, t in enumerate(operands[2:])]
    none = x.new_empty(0)
    factors = [f if f is not None else none for _, f in fq]
    # dX and dW as the layer computes them: the estimator's factor in the fprop domain, mapped back
    d_x = _to_input_domain(quantized[2] @ quantized[3], factors[0], had[0], seed, (), plan.from_forward)
    d_w = _to_input_domain(quantized[4].t() @ quantized[5], factors[1], had[0], seed, (), plan.from_forward)
    outputs = (quantized[0] @ quantized[1].t(), d_x, d_w)
    return operands, quantized, outputs


GEMM_NAMES = ("Y", "dX", "dW")


def gemm_quality(exact: torch.Tensor, draws: list) -> dict:
    """Relative L2 error (mean over draws), gain and relative bias of quantized results."""
    ref = exact.double()
    norm2 = ref.pow(2).sum().clamp_min(1e-300)
    errs = [float((d.double() - ref).norm() / norm2.sqrt()) for d in draws]
    mean = torch.stack([d.double() for d in draws]).mean(0)
    return {"rel_err": sum(errs) / len(errs), "gain": float((mean * ref).sum() / norm2),
            "bias": float((mean - ref).norm() / norm2.sqrt())}


def measure_layer(x, w, dy, recipe: Recipe, seed: int = 0, draws: int = 1) -> dict:
    """One layer under ``recipe``, ``draws`` times with different SR bits (draw k from Philox
    offset k * 2^40): SQNR of the six operands and of the three GEMM outputs against fp32
    (first draw), and per GEMM (Y, dX, dW) the relative error, gain and bias over the draws
    (``gemm_quality``); ``score`` is the largest relative error of the three."""
    exact = (x @ w.t(), dy @ w, dy.t() @ x)
    results, row = [[], [], []], {}
    for k in range(draws):
        operands, quantized, outs = quantized_gemms(x, w, dy, recipe, seed, offset=k * (1 << 40))
        for i, o in enumerate(outs):
            results[i].append(o)
        if k == 0:
            row.update({f"sqnr_{s}": sqnr_db(t, q) for s, t, q in zip(SLOTS, operands, quantized)})
            for key, g, o in zip(("sqnr_fprop_Y", "sqnr_dgrad_dX", "sqnr_wgrad_dW"), exact, outs):
                row[key] = sqnr_db(g, o)
            row["worst_gemm_sqnr"] = min(row["sqnr_fprop_Y"], row["sqnr_dgrad_dX"], row["sqnr_wgrad_dW"])
    for name, g, rs in zip(GEMM_NAMES, exact, results):
        for key, v in gemm_quality(g, rs).items():
            row[f"{name}_{key}"] = v
    row["score"] = max(row[f"{n}_rel_err"] for n in GEMM_NAMES)
    return row


def builtin_model(batch_size: int = 16, seed: int = 0):
    from .sim.data import ByteCorpus
    from .sim.model import TinyLM
    torch.manual_seed(seed)
    model = TinyLM()
    x, y = ByteCorpus().batch("train", batch_size, model.cfg.seq_len, torch.Generator().manual_seed(seed))
    return model, x, lambda logits: F.cross_entropy(logits.flatten(0, 1), y.flatten())


def load_user_model(spec: str):
    """'package.module:factory' -> factory() returning (model, inputs) or (model, inputs, loss_fn).
    The module is looked up on sys.path and in the current directory. ``inputs`` is a tensor, a
    tuple of positional arguments or a dict of keyword arguments (transformers: input_ids,
    labels). Without a loss_fn the loss is the output's own ``loss`` (a transformers model
    given labels), else the mean square of the output."""
    import os
    import sys
    if ":" not in spec:
        raise ValueError(f"--model takes 'package.module:factory', got {spec!r}")
    mod_name, fn_name = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    out = getattr(importlib.import_module(mod_name), fn_name)()
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise ValueError(f"{spec} must return (model, inputs) or (model, inputs, loss_fn)")
    model, inputs = out[0], out[1]
    loss_fn = out[2] if len(out) == 3 else default_loss
    return model, inputs, loss_fn


def default_loss(out):
    """The model's own loss when it returns one (transformers with labels), else mean square."""
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is not None:
        return loss
    t = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
    return t.float().pow(2).mean()


def diagnose(model: nn.Module, inputs, loss_fn, recipe, seed: int = 0, draws: int = 4):
    """Per-layer SQNR of ``recipe`` on the activations and gradients of one batch through
    ``model``.  An already converted model is diagnosed in its unconverted form (a reverted
    copy: the same parameters, the plain function), with a warning: its quantized layers are
    not plain linear layers, and measuring them would have given an empty table."""
    recipe = get(recipe)
    from .convert import converted_modules, revert_model
    done = converted_modules(model)
    if done:
        import copy
        import warnings
        warnings.warn(f"diagnose: the model is already converted ({len(done)} lowprec layers, e.g. {done[0]!r}); "
                      "diagnosing its unconverted form (revert_model on a copy)", stacklevel=2)
        model = revert_model(copy.deepcopy(model))
    records = capture(model, inputs, loss_fn)
    rows = []
    for name, (x, w, dy) in records.items():
        row = {"layer": name, "shape": f"{w.shape[0]}x{w.shape[1]}", "tokens": x.shape[0]}
        if recipe.shape_mismatch(w.shape[1], w.shape[0]):
            row["note"] = "skipped by convert_model (shape not blockable)"
        row.update(measure_layer(x, w, dy, recipe, layer_seed(seed, name), draws))
        rows.append(row)
    rows.sort(key=lambda r: r["worst_gemm_sqnr"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


LEGEND = """legend:
  Y, dX, dW   SQNR (dB) of the quantized GEMM outputs (fprop, dgrad, wgrad) against fp32
  X .. X(wg)  SQNR (dB) of the six quantized operands, in their GEMM's transformed domain
  gain        <mean quantized, fp32> / ||fp32||^2 of dX and dW over the SR draws (1 = unbiased in scale)
  err         relative L2 error ||quantized - fp32|| / ||fp32||, mean over draws
  bias        ||mean over draws - fp32|| / ||fp32|| (SR noise shrinks as 1/sqrt(draws))
guidance: FP4 operands with 16-element blocks sit near 20 dB SQNR (relative error about 0.1);
  a GEMM below about 13 dB (error above 0.22), a gain off 1 by more than 0.02, or a bias near
  the error with stochastic rounding marks a layer to keep in higher precision
  (`lowprec plan` picks them within a budget)."""


def print_rows(rows, recipe_name: str, top: int = 0):
    print(f"recipe {recipe_name}: layers ranked by worst GEMM SQNR (dB, higher is better)")
    width = max([5] + [len(r["layer"]) for r in rows[: top or None]])
    hdr = (f"{'#':>3s} {'layer':{width}s} {'shape':>10s} {'Y':>6s} {'dX':>6s} {'dW':>6s} | {'X':>6s} {'W':>6s} "
           f"{'dY(dg)':>7s} {'W(dg)':>6s} {'dY(wg)':>7s} {'X(wg)':>6s} | {'dX gain':>7s} {'dX err':>6s} "
           f"{'dW gain':>7s} {'dW err':>6s} {'dW bias':>7s}")
    print(hdr)
    for r in rows[: top or None]:
        print(f"{r['rank']:3d} {r['layer']:{width}s} {r['shape']:>10s} {r['sqnr_fprop_Y']:6.1f} "
              f"{r['sqnr_dgrad_dX']:6.1f} {r['sqnr_wgrad_dW']:6.1f} | "
              + " ".join(f"{r['sqnr_' + s]:{7 if 'lhs' in s and not s.startswith('fprop') else 6}.1f}" for s in SLOTS)
              + f" | {r['dX_gain']:7.4f} {r['dX_rel_err']:6.3f} {r['dW_gain']:7.4f} {r['dW_rel_err']:6.3f} "
                f"{r['dW_bias']:7.4f}"
              + ("  *" + r["note"] if "note" in r else ""))
    print(LEGEND)


def add_arguments(p):
    p.add_argument("--recipe", default="nvfp4")
    p.add_argument("--model", default="builtin", help="'builtin' or 'package.module:factory'")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=0, help="print only the worst N layers")
    p.add_argument("--draws", type=int, default=4, help="stochastic-rounding draws for gain and bias")
    p.add_argument("--json", default="lowprec_runs/diagnose.json")


def run(args):
    if args.model == "builtin":
        model, inputs, loss_fn = builtin_model(args.batch_size, args.seed)
    else:
        model, inputs, loss_fn = load_user_model(args.model)
    recipe = get(args.recipe)
    rows = diagnose(model, inputs, loss_fn, recipe, args.seed, args.draws)
    print_rows(rows, recipe.name, args.top)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"recipe": recipe.to_dict(), "layers": rows}, indent=1) + "\n")
        print(f"wrote {path}")
    return rows
