"""Two CPU processes with gloo train under FSDP2 (fully_shard) with lowprec's optimizers: AdamS
on a CAST model, ASTAdamW on an AST model, GaLoreAdamW (fp32 and MXFP8 moments) on a plain
one, and torch's AdamW on models converted with every training preset and the sparse layer
configs; the result must equal the same run under DDP and one process doing what the two
ranks do.

AdamS and ASTAdamW step each rank's local rows of the sharded weights (their update is
elementwise and 2:4 groups run within a row); GaLore gathers the gradient for its projector
and keeps the local rows of the update, and stores its state sharded by rows (each rank holds
at most 1/WORLD of the bytes DDP holds, plus scalars).  The one-process reference takes each half-batch's
gradient separately (each from the SR offset a rank starts from, as each rank quantizes its
own half) and averages them, which is what FSDP2's reduce-scatter computes, so the comparison
is bit for bit (masks, step counters, SR offsets and weights).

    python fsdp_worker.py OUT_DIR
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lowprec
from lowprec import sparse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_shared"))
from gloo_exit import leave_group  # noqa: E402

WORLD, TOKENS_PER_RANK, STEPS = 2, 32, 4


def model(config):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    return m if config is None else lowprec.convert_model(m, config)


def optimizer(name, m):
    if name.startswith("galore"):
        from lowprec.galore import GaLoreAdafactor, GaLoreAdamW
        ws = [m[0].weight, m[2].weight]
        if name == "galore_adafactor":
            return GaLoreAdafactor([{"params": ws, "rank": 8, "update_proj_gap": 2},
                                    {"params": [m[0].bias, m[2].bias]}], lr=1e-2, beta1=0.9)
        fmt = "mxfp8" if name == "galore_mxfp8" else "fp32"
        extra = {}
        if name == "galore_options":     # microscaled projector, randomized refresh, reprojected moments, both sides
            extra = dict(proj_format="mxfp8", refresh="randomized", moment_policy="reproject", proj_type="full")
        return GaLoreAdamW([{"params": ws, "rank": 8, "update_proj_gap": 2, "state_format": fmt, **extra},
                            {"params": [m[0].bias, m[2].bias]}], lr=1e-2)
    if name not in ("adams", "ast"):
        return torch.optim.AdamW(m.parameters(), lr=1e-2)
    if name == "adams":
        return sparse.AdamS(sparse.cast_param_groups(m), lr=1e-2, lam=1e-3, total_steps=STEPS, mask_interval=2)
    return sparse.ASTAdamW.for_model(m, lr=1e-2, lam=1e-2, ramp_steps=2)


CASES = {"adams": sparse.CASTConfig(), "ast": sparse.ASTConfig(mask_interval=2, slorb_k=0),
         "galore": None, "galore_mxfp8": None, "galore_adafactor": None, "galore_options": None,
         # converted layers under FSDP2 with torch's AdamW: every training preset and the sparse layers
         **{f"adamw_{r}": r for r in lowprec.recipes.TRAINING_PRESETS},
         "adamw_srste": sparse.SRSTEConfig(mask_interval=2),
         "adamw_ast_slorb": sparse.ASTConfig(mask_interval=2, slorb_k=8),
         "adamw_sparse_nvfp4": sparse.SparseFP4Config(sparse.ASTConfig(mask_interval=2), "nvfp4")}


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(TOKENS_PER_RANK * WORLD, 64, generator=g), torch.randn(TOKENS_PER_RANK * WORLD, 64, generator=g))
            for _ in range(STEPS)]


def train(m, opt, data, rows=slice(None)):
    for x, y in data:
        opt.zero_grad()
        (m(x[rows]) - y[rows]).pow(2).mean().backward()
        opt.step()


def train_as_two_ranks(m, opt, data, world=WORLD):
    """One process doing what ``world`` FSDP2 ranks do together: each rank's slice of the batch
    gives its gradient separately, then their average (what FSDP2's reduce-scatter computes;
    for 2 and 4 ranks the division is exact)."""
    offsets = {n: b for n, b in m.named_buffers() if n.endswith("sr_offset")}
    per_rank = TOKENS_PER_RANK * WORLD // world
    for x, y in data:
        halves = []
        start = {n: b.clone() for n, b in offsets.items()}
        for r in range(world):
            rows = slice(r * per_rank, (r + 1) * per_rank)
            opt.zero_grad()
            m.train(r == 0)       # each rank's AST layers count one forward per step: so does this process
            if r >= 1:            # and each rank draws its SR bits from the same offset
                if r == 1:
                    after = {n: b.clone() for n, b in offsets.items()}
                for n, b in offsets.items():
                    b.copy_(start[n])
            (m(x[rows]) - y[rows]).pow(2).mean().backward()
            halves.append([p.grad.clone() for p in m.parameters()])
        for n, b in offsets.items():
            b.copy_(after[n])
        m.train()
        for p, *gs in zip(m.parameters(), *halves):
            p.grad = sum(g / world for g in gs)
        opt.step()


def full_state(m):
    out = {}
    for k, v in m.state_dict().items():
        out[k] = v.full_tensor() if hasattr(v, "full_tensor") else v
    return out


def worker(rank, out_dir):
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=300),
                            init_method="file://" + os.path.join(out_dir, "rendezvous"))
    from torch.distributed.fsdp import fully_shard
    rows = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
    for name, config in CASES.items():
        m = model(config)
        for layer in m:
            if any(p.requires_grad for p in layer.parameters()):
                fully_shard(layer)
        fully_shard(m)
        opt = optimizer(name, m)
        train(m, opt, batches(), rows)
        state = full_state(m)
        if rank == 0:
            torch.save(state, os.path.join(out_dir, f"fsdp_{name}.pt"))
        ddp = nn.parallel.DistributedDataParallel(model(config))     # the same run under DDP
        ddp_opt = optimizer(name, ddp.module)
        train(ddp, ddp_opt, batches(), rows)
        if rank == 0:
            torch.save(ddp.module.state_dict(), os.path.join(out_dir, f"ddp_{name}.pt"))
        if name.startswith("galore"):        # the state is stored sharded: 1/WORLD of it per rank
            from lowprec.galore import optimizer_state_bytes
            torch.save({"fsdp": optimizer_state_bytes(opt), "ddp": optimizer_state_bytes(ddp_opt)},
                       os.path.join(out_dir, f"bytes_{name}_{rank}.pt"))
    from lowprec.galore import LayerwiseOptimizer
    m = model(None)
    fully_shard(m)
    try:
        LayerwiseOptimizer(m, optimizer("galore", m))
    except NotImplementedError as e:
        if rank == 0:
            print("layerwise refused under FSDP2:", str(e).split(":")[0], flush=True)
    leave_group()


def main(out_dir):
    mp.spawn(worker, args=(out_dir,), nprocs=WORLD, join=True)
    for name, config in CASES.items():
        worst = 0.0
        m = model(config)
        opt = optimizer(name, m)
        train_as_two_ranks(m, opt, batches())
        got = torch.load(os.path.join(out_dir, f"fsdp_{name}.pt"))
        ddp = torch.load(os.path.join(out_dir, f"ddp_{name}.pt"))
        for k, v in ddp.items():
            assert torch.equal(v, got[k]), (name, "FSDP2 vs DDP", k)
        for k, v in m.state_dict().items():
            if v.dtype == torch.bool or not v.is_floating_point():
                assert torch.equal(v, got[k]), (name, k)
            else:
                d = (v - got[k]).abs().max().item()
                worst = max(worst, d)
                assert d == 0.0, (name, k, d)
        print(f"{name}: FSDP2 == DDP == single process (max |difference| {worst:.2e})", flush=True)
        if name.startswith("galore"):
            per_rank = [torch.load(os.path.join(out_dir, f"bytes_{name}_{r}.pt")) for r in range(WORLD)]
            replicated = per_rank[0]["ddp"]
            assert all(b["ddp"] == replicated for b in per_rank)
            worst_rank = max(b["fsdp"] for b in per_rank)
            # the step counters and SR seeds/offsets (scalars) stay replicated
            assert worst_rank <= replicated / WORLD + 512, (name, worst_rank, replicated)
            print(f"{name}: state bytes per rank FSDP2 {worst_rank} <= DDP {replicated} / {WORLD}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
