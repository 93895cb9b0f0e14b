"""Tables, JSON and plots for simulation sweeps."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def summarize(results, baseline: str = "bf16", step_times: dict = None, tokens_per_step: int = None):
    """One row per recipe: mean/std over seeds of the final loss, val loss and the gap to the
    baseline (paired by seed; std None with one seed), and throughput: from ``step_times``
    (median seconds per step of an interleaved timing pass) when given, else the runs' own."""
    by = {}
    for r in results:
        by.setdefault(r.recipe, []).append(r)
    base = {r.seed: r for r in by.get(baseline, [])}
    rows = []
    for name, runs in by.items():
        finals = [r.final_loss for r in runs]
        vals = [r.val_loss for r in runs]
        gaps = [r.val_loss - base[r.seed].val_loss for r in runs if r.seed in base]
        rows.append({
            "recipe": name, "seeds": len(runs),
            "final_loss": statistics.mean(finals), "final_loss_std": _std(finals),
            "val_loss": statistics.mean(vals), "val_loss_std": _std(vals),
            "gap_to_" + baseline: statistics.mean(gaps) if gaps else None,
            "gap_std": _std(gaps) if gaps else None,
            "tokens_per_s": statistics.mean(r.tokens_per_s for r in runs),
            "step_time_s": statistics.mean(r.step_time_s for r in runs),
            "step_time_source": "training loop (mean)",
        })
        if step_times and name in step_times:
            rows[-1]["step_time_s"] = step_times[name]
            rows[-1]["tokens_per_s"] = tokens_per_step / step_times[name]
            rows[-1]["step_time_source"] = "interleaved timing pass (median)"
    if baseline in by:
        t0 = next(r["step_time_s"] for r in rows if r["recipe"] == baseline)
        for r in rows:
            r["step_time_over_" + baseline] = r["step_time_s"] / t0
    return rows


def _std(v):
    """Sample standard deviation; None for a single value (no spread was measured)."""
    return statistics.stdev(v) if len(v) > 1 else None


def _pm(mean, std, fmt="8.4f"):
    """'mean ± std', or 'mean' alone with one seed (printing ± 0.0000 would claim a spread)."""
    return f"{mean:{fmt}} ± {std:.4f}" if std is not None else f"{mean:{fmt}}        "


def print_summary(rows, baseline: str = "bf16"):
    print(f"{'recipe':10s} {'seeds':>5s} {'train loss':>16s} {'val loss':>16s} {'gap to ' + baseline:>18s} "
          f"{'tokens/s':>9s} {'step x' + baseline:>9s}")
    for r in rows:
        gap = r["gap_to_" + baseline]
        gap_s = _pm(gap, r["gap_std"], "+.4f") if gap is not None else "n/a"
        print(f"{r['recipe']:10s} {r['seeds']:5d} {_pm(r['final_loss'], r['final_loss_std'])} "
              f"{_pm(r['val_loss'], r['val_loss_std'])} {gap_s:>18s} {r['tokens_per_s']:9.0f} "
              f"{r.get('step_time_over_' + baseline, float('nan')):9.2f}")
    if rows and all(r["seeds"] == 1 for r in rows):
        print("(one seed: no spread is shown; --seeds 0 1 2 measures it)")
    if rows and rows[0].get("step_time_source"):
        print(f"speed columns: {rows[0]['step_time_source']}")


def write_json(path: Path, rows, results, config: dict, extra=None):
    from ..bench.harness import environment     # device, commit, versions and date beside the numbers
    payload = {"summary": rows, "runs": [r.to_dict() for r in results], "config": config,
               "environment": environment("cpu")}
    if extra:
        payload.update(extra)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def plot_losses(path: Path, results, title: str, smooth: int = 10, baseline: str = "bf16") -> bool:
    """Left: loss curves per recipe (seeds overlaid). Right: each recipe's loss minus the
    baseline's on the same seed (what separates recipes). False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    base = {r.seed: _moving_average(r.losses, smooth) for r in results if r.recipe == baseline}
    fig, (ax, ax_gap) = plt.subplots(1, 2, figsize=(13, 5))
    colors, labelled = {}, set()
    for r in results:
        c = colors.setdefault(r.recipe, f"C{len(colors)}")
        y = _moving_average(r.losses, smooth)
        label = None if r.recipe in labelled else r.recipe
        labelled.add(r.recipe)
        ax.plot(range(len(y)), y, color=c, alpha=0.8, label=label)
        if r.seed in base:
            ax_gap.plot(range(len(y)), [a - b for a, b in zip(y, base[r.seed])], color=c, alpha=0.8, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (moving average of {smooth})")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    ax_gap.axhline(0.0, color="k", lw=0.8)
    ax_gap.set_xlabel("step")
    ax_gap.set_ylabel(f"loss - {baseline} loss (same seed)")
    ax_gap.set_title(f"gap to {baseline}")
    ax_gap.grid(alpha=0.3)
    ax_gap.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _moving_average(v, k):
    out, acc = [], 0.0
    for i, x in enumerate(v):
        acc += x
        if i >= k:
            acc -= v[i - k]
        out.append(acc / min(i + 1, k))
    return out
