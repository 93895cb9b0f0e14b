"""GaLore on this CPU: (1) optimizer-state memory against AdamW, measured from the state
tensors after one step, on the simulate model and on LLaMA-shaped models built from a
config (transformers' LlamaConfig); (2) projector refresh time, full SVD against the
randomized range finder, with the subspace error; (3) amortized optimizer-step time against
AdamW on a LLaMA-shaped layer stack; (4) amortized whole training step (forward, backward,
optimizer; refreshes included) on the simulate model, the optimizers interleaved in rounds
so that they share the machine's state; (5) the fused Adam-moment op per backend.

Usage: python benchmarks/bench_galore.py [--parts memory formula refresh step train moments] [--quick]
"""

import argparse
import time

import torch
from torch import nn

from lowprec.bench.harness import print_table, time_fn, write_results
from lowprec.galore import (GaLoreAdamW, galore_param_groups, optimizer_state_bytes, randomized_svd,
                            subspace_similarity, thin_svd)
from lowprec.sim.model import TinyLM

LLAMA = {  # the GaLore paper's model sizes (hidden, intermediate, layers, heads), vocab 32000
    "llama-60m": (512, 1376, 8, 8),
    "llama-130m": (768, 2048, 12, 12),
}
LLAMA_FORMULA = {"llama-1b": (2048, 5461, 24, 32), "llama-7b": (4096, 11008, 32, 32)}
RANK_RATIO = 0.25          # the paper: rank 128 of 512 (60M), 256 of 768 (130M), 512 of 2048 (1B)


def llama(name, device=None):
    from transformers import LlamaConfig, LlamaForCausalLM
    h, i, n, heads = {**LLAMA, **LLAMA_FORMULA}[name]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                      vocab_size=32000, max_position_embeddings=256)
    torch.manual_seed(0)
    if device == "meta":
        with torch.device("meta"):
            return LlamaForCausalLM(cfg), h
    return LlamaForCausalLM(cfg), h


def formula_rows():
    """fp32 state numbers from the shapes alone (meta tensors): AdamW 2 per parameter;
    GaLore 2·m·r or 2·r·n plus the projector for projected matrices, 2 per parameter else."""
    from lowprec.galore import optimizer_state_formula
    rows = []
    for name in list(LLAMA) + list(LLAMA_FORMULA):
        model, hidden = llama(name, device="meta")
        rank = int(hidden * RANK_RATIO)
        groups = galore_param_groups(model, rank, exclude=("embed", "head", "lm_head", "norm", "ln", "pos"))
        proj, plain = groups[0]["params"], groups[1]["params"]
        adamw = 2 * sum(p.numel() for p in model.parameters())
        galore_proj = sum(optimizer_state_formula(proj, rank).values())
        galore = galore_proj + 2 * sum(p.numel() for p in plain)
        proj_adamw = 2 * sum(p.numel() for p in proj)
        rows.append({"model": name, "rank": rank, "params_M": adamw / 2e6, "adamw_state_GiB": 4 * adamw / 2 ** 30,
                     "galore_state_GiB": 4 * galore / 2 ** 30, "saving_all": 1 - galore / adamw,
                     "saving_projected_layers": 1 - galore_proj / proj_adamw})
    return rows


def state_bytes_after_one_step(model, opt):
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return optimizer_state_bytes(opt)


def memory_rows(quick):
    rows = []
    models = [("tiny-lm (simulate)", lambda: (TinyLM(), 64))] + \
        [(n, (lambda n=n: llama(n))) for n in (["llama-60m"] if quick else list(LLAMA))]
    for name, build in models:
        model, hidden = build()
        rank = int(hidden * RANK_RATIO)
        exclude = ("embed", "head", "lm_head", "norm", "ln", "pos")
        base = None
        for opt_name, make in [
            ("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)),
            ("galore", lambda m: GaLoreAdamW(galore_param_groups(m, rank, exclude=exclude), lr=1e-3)),
            ("galore-8bit", lambda m: GaLoreAdamW(galore_param_groups(m, rank, exclude=exclude,
                                                                      state_format="mxfp8"), lr=1e-3)),
        ]:
            for p in model.parameters():
                p.grad = None
            opt = make(model)
            b = state_bytes_after_one_step(model, opt)
            base = base or b
            projected = sum(p.numel() for g in opt.param_groups if g.get("rank") for p in g["params"])
            rows.append({"model": name, "optimizer": opt_name, "rank": rank if opt_name != "adamw" else None,
                         "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                         "projected_params_M": projected / 1e6 if opt_name != "adamw" else 0.0,
                         "state_MiB": b / 2 ** 20, "vs_adamw": b / base, "saving": 1 - b / base})
            del opt
    return rows


def refresh_rows(quick):
    shapes = [(1024, 1024), (2048, 2048)] + ([] if quick else [(4096, 11008)])
    rows = []
    for m, n in shapes:
        r = 128
        g = torch.Generator().manual_seed(0)
        # a gradient-like matrix: decaying spectrum plus noise
        u, _ = torch.linalg.qr(torch.randn(m, 256, generator=g))
        v, _ = torch.linalg.qr(torch.randn(n, 256, generator=g))
        s = torch.logspace(0, -2, 256)
        a = (u * s) @ v.T + 1e-3 * torch.randn(m, n, generator=g) / (m * n) ** 0.25
        t_svd = time_fn(lambda: thin_svd(a), repeats=1 if m * n > 5e6 else 3)
        u_ex, _, vt_ex = thin_svd(a)
        for q in (0, 1, 2):
            t = time_fn(lambda: randomized_svd(a, r, 8, q, torch.Generator().manual_seed(1)), repeats=3)
            ur, _, vtr = randomized_svd(a, r, 8, q, torch.Generator().manual_seed(1))
            rows.append({"shape": f"{m}x{n}", "rank": r, "method": f"randomized q={q}", "time_s": t["median_s"],
                         "svd_time_s": t_svd["median_s"], "speedup": t_svd["median_s"] / t["median_s"],
                         "subspace_error_left": 1 - subspace_similarity(u_ex[:, :r], ur[:, :r], "left"),
                         "subspace_error_right": 1 - subspace_similarity(vt_ex[:r], vtr[:r], "right")})
        rows.append({"shape": f"{m}x{n}", "rank": r, "method": "full svd", "time_s": t_svd["median_s"],
                     "svd_time_s": t_svd["median_s"], "speedup": 1.0, "subspace_error_left": 0.0,
                     "subspace_error_right": 0.0})
    return rows


def step_rows(quick):
    """Optimizer step only (gradients given), a stack of LLaMA-60M-shaped matrices."""
    h, i = 512, 1376
    layers = 2 if quick else 4
    shapes = [(h, h)] * 4 * layers + [(i, h), (i, h), (h, i)] * layers
    rows = []
    gap = 200
    for name, make, refresh in [
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-3), None),
        ("galore svd", lambda ps: GaLoreAdamW([{"params": ps, "rank": 128, "update_proj_gap": gap}], lr=1e-3), "svd"),
        ("galore randomized", lambda ps: GaLoreAdamW([{"params": ps, "rank": 128, "update_proj_gap": gap,
                                                      "refresh": "randomized"}], lr=1e-3), "randomized"),
        ("galore 8-bit", lambda ps: GaLoreAdamW([{"params": ps, "rank": 128, "update_proj_gap": gap,
                                                 "refresh": "randomized", "state_format": "mxfp8"}], lr=1e-3),
         "randomized"),
        ("galore fp4 (nvfp4)", lambda ps: GaLoreAdamW([{"params": ps, "rank": 128, "update_proj_gap": gap,
                                                       "refresh": "randomized", "state_format": "nvfp4"}], lr=1e-3),
         "randomized"),
        ("galore 8-bit + 8-bit P", lambda ps: GaLoreAdamW([{"params": ps, "rank": 128, "update_proj_gap": gap,
                                                           "refresh": "randomized", "state_format": "mxfp8",
                                                           "proj_format": "mxfp8"}], lr=1e-3), "randomized"),
    ]:
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        opt = make(ps)
        t0 = time.perf_counter()
        opt.step()                                   # first step: refresh (galore)
        t_first = time.perf_counter() - t0
        t = time_fn(opt.step, repeats=5, warmup=1)   # steps between refreshes
        amortized = t["median_s"] + (t_first - t["median_s"]) / gap if refresh else t["median_s"]
        rows.append({"optimizer": name, "refresh_step_s": t_first, "plain_step_s": t["median_s"],
                     "amortized_step_s": amortized})
    base = rows[0]["amortized_step_s"]
    for r in rows:
        r["vs_adamw"] = r["amortized_step_s"] / base
    return rows


def moment_rows(quick):
    """The fused Adam-moment op (decode, update, stochastic re-quantization) per backend."""
    from lowprec import ops
    from lowprec.galore import moments as mom
    shapes = [(512, 128)] if quick else [(512, 128), (128, 1376), (2048, 512)]
    rows = []
    for fmt in ("fp32", "mxfp8", "nvfp4"):
        for shape in shapes:
            for backend in ("reference", "cpp"):
                if not ops.backend_status(backend)[0]:
                    continue
                m_st, v_st = mom.zeros(shape, fmt)
                r = torch.randn(shape)
                sc = mom.MomentScalars.make(3, (0.9, 0.999), 1e-8)
                t = time_fn(lambda: mom.adam_moments(r, m_st, v_st, fmt, sc, backend=backend), repeats=5, warmup=1)
                n = r.numel()
                rows.append({"format": fmt, "shape": f"{shape[0]}x{shape[1]}", "backend": backend,
                             "time_ms": t["median_s"] * 1e3, "ns_per_element": t["median_s"] / n * 1e9})
    return rows


def train_rows(quick):
    """Whole training steps of the simulate model (batch 16 x 64), mean over every step of
    each round (so refreshes every 50 steps are amortized), optimizers interleaved."""
    import torch.nn.functional as F
    from lowprec.sim.model import TinyLMConfig
    cfg = TinyLMConfig()
    extra = {"adamw": None, "galore": {}, "galore 8-bit": {"state_format": "mxfp8"},
             "galore fp4 (nvfp4)": {"state_format": "nvfp4"}, "galore randomized": {"refresh": "randomized"},
             "galore 8-bit + 8-bit P": {"state_format": "mxfp8", "proj_format": "mxfp8"}}
    runs = {}
    for name, kw in extra.items():
        torch.manual_seed(0)
        model = TinyLM(cfg)
        opt = (torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1) if kw is None else
               GaLoreAdamW(galore_param_groups(model, rank=cfg.d_model // 4, update_proj_gap=50, scale=0.25, **kw),
                           lr=1e-3, weight_decay=0.1))
        runs[name] = (model, opt)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab, (16, cfg.seq_len + 1), generator=gen)
    steps, rounds = (50, 2) if quick else (100, 4)
    times = {n: [] for n in runs}
    for rnd in range(rounds + 1):
        for name, (model, opt) in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                logits = model(ids[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), ids[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if rnd:                                          # round 0 warms up (first refresh)
                times[name].append((time.perf_counter() - t0) / steps)
    base = sum(times["adamw"]) / len(times["adamw"])
    rows = []
    for name, ts in times.items():
        mean = sum(ts) / len(ts)
        rows.append({"optimizer": name, "step_ms": mean * 1e3, "min_round_ms": min(ts) * 1e3,
                     "max_round_ms": max(ts) * 1e3, "vs_adamw": mean / base})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", nargs="+", default=["memory", "formula", "refresh", "step", "train", "moments"],
                    choices=["memory", "formula", "refresh", "step", "train", "moments"])
    ap.add_argument("--quick", action="store_true", help="small shapes only")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    parts = {  # name: (rows, title, columns, results file)
        "memory": (memory_rows, "optimizer-state memory (measured from the state tensors after one step)",
                   ["model", "optimizer", "rank", "params_M", "projected_params_M", "state_MiB", "vs_adamw",
                    "saving"], "galore_memory_cpu"),
        "formula": (lambda quick: formula_rows(), "optimizer-state size from the shapes (fp32 numbers), rank = hidden / 4",
                    ["model", "rank", "params_M", "adamw_state_GiB", "galore_state_GiB", "saving_all",
                     "saving_projected_layers"], "galore_memory_formula"),
        "refresh": (refresh_rows, "projector refresh: full SVD vs randomized range finder (r=128, oversample 8)",
                    ["shape", "method", "time_s", "speedup", "subspace_error_left", "subspace_error_right"],
                    "galore_refresh_cpu"),
        "step": (step_rows, "optimizer step, LLaMA-60M-shaped matrices, rank 128, refresh every 200 steps",
                 ["optimizer", "refresh_step_s", "plain_step_s", "amortized_step_s", "vs_adamw"], "galore_step_cpu"),
        "train": (train_rows, "whole training step, simulate model, rank d_model/4, refresh every 50 steps (amortized)",
                  ["optimizer", "step_ms", "min_round_ms", "max_round_ms", "vs_adamw"], "galore_train_step_cpu"),
        "moments": (moment_rows, "fused Adam-moment op (galore_adam_moments), stochastic re-quantization for low-bit "
                    "state", ["format", "shape", "backend", "time_ms", "ns_per_element"], "galore_moments_cpu"),
    }
    for name in args.parts:
        make, title, columns, out = parts[name]
        rows = make(args.quick)
        print("\n" + title)
        print_table(rows, columns)
        print("wrote", write_results(out, rows))

if __name__ == "__main__":
    main()
