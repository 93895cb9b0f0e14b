"""FSDP2 on this CPU (gloo): per-rank optimizer-state bytes of lowprec's optimizers against
AdamW at 2 and 4 ranks, and the training-step time under FSDP2 against DDP.

A LLaMA-shaped MLP stack (hidden 512, intermediate 1376, 4 blocks: the GaLore paper's 60M
widths) is trained for a few steps on random data; the state bytes are counted from each
rank's local state tensors (a DTensor counts its local shard); step times are medians over
the timed steps, ranks synchronized by a barrier.

Usage: python benchmarks/bench_fsdp.py [--ranks 2 4] [--steps 6]
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lowprec.bench.harness import print_table, write_results

HIDDEN, INTER, BLOCKS, TOKENS = 512, 1376, 4, 256


def stack():
    torch.manual_seed(0)
    layers = []
    for _ in range(BLOCKS):
        layers += [nn.Linear(HIDDEN, INTER), nn.GELU(), nn.Linear(INTER, HIDDEN)]
    return nn.Sequential(*layers)


def make_optimizer(name, m):
    from lowprec import sparse
    from lowprec.galore import GaLoreAdamW
    if name == "adamw":
        return torch.optim.AdamW(m.parameters(), lr=1e-3)
    if name == "adams":
        return sparse.AdamS(sparse.cast_param_groups(m), lr=1e-3, total_steps=100)
    ws = [p for p in m.parameters() if p.dim() == 2]
    rest = [p for p in m.parameters() if p.dim() != 2]
    return GaLoreAdamW([{"params": ws, "rank": 128, "update_proj_gap": 200}, {"params": rest}], lr=1e-3)


def worker(rank, world, mode, name, steps, path, out):
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600),
                            init_method="file://" + path)
    torch.set_num_threads(max(1, os.cpu_count() // world))
    import lowprec
    from lowprec import sparse
    m = stack()
    if name == "adams":
        m = lowprec.convert_model(m, sparse.CASTConfig())
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard
        for layer in m:
            if any(p.requires_grad for p in layer.parameters()):
                fully_shard(layer)
        fully_shard(m)
    else:
        m = nn.parallel.DistributedDataParallel(m)
    opt = make_optimizer(name, m)
    g = torch.Generator().manual_seed(rank)
    times = []
    for i in range(steps):
        x = torch.randn(TOKENS, HIDDEN, generator=g)
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
        dist.barrier()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        from lowprec.galore import optimizer_state_bytes      # a DTensor counts its local shard
        torch.save({"state_bytes": optimizer_state_bytes(opt), "step_s": statistics.median(times)}, out)
    dist.barrier()
    dist.destroy_process_group()
    # skip interpreter teardown: the group's C++ threads, still referenced by the model, have
    # aborted a finished rank (SIGABRT) when destroyed during finalization under load
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run(world, mode, name, steps):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.pt")
        mp.spawn(worker, args=(world, mode, name, steps, os.path.join(d, "rdv"), out), nprocs=world, join=True)
        return torch.load(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    rows = []
    for world in args.ranks:
        for name in ("adamw", "adams", "galore"):
            for mode in ("ddp", "fsdp2"):
                r = run(world, mode, name, args.steps)
                rows.append({"ranks": world, "optimizer": name, "mode": mode,
                             "state_MiB_per_rank": r["state_bytes"] / 2 ** 20, "step_ms": 1e3 * r["step_s"]})
                print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, list(rows[0]))
    path = write_results("fsdp_cpu", rows, extra={"model": f"{BLOCKS} x MLP {HIDDEN}-{INTER}", "tokens_per_rank": TOKENS,
                                                  "note": "GaLore under FSDP2 stores its state sharded by rows and all-gathers the gradient and its state for each step"})
    print("wrote", path)


if __name__ == "__main__":
    main()
