"""Two CPU processes with gloo train under DDP with GaLoreAdamW (SVD refresh every 2
steps); the weights after 4 steps must match one process on the same global batch."""

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lowprec.galore import GaLoreAdamW, galore_param_groups

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_shared"))
from gloo_exit import leave_group  # noqa: E402

PER_RANK, WORLD, STEPS = 32, 2, 4


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16))


def optimizer(m):
    return GaLoreAdamW(galore_param_groups(m, rank=4, update_proj_gap=2, scale=0.5), lr=1e-2)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(PER_RANK * WORLD, 32, generator=g), torch.randn(PER_RANK * WORLD, 16, generator=g))
            for _ in range(STEPS)]


def worker(rank, out_dir):
    # rendezvous through a file in the test's own temp dir: no fixed port to collide on a busy
    # machine (gloo's own connections take free ephemeral ports); generous timeout under load
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=300),
                            init_method="file://" + os.path.join(out_dir, "rendezvous"))
    m = DDP(model())
    opt = optimizer(m.module)
    sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for x, y in batches():
        opt.zero_grad()
        (m(x[sl]) - y[sl]).pow(2).mean().backward()
        opt.step()
    if rank == 0:
        torch.save([p.detach() for p in m.module.parameters()], os.path.join(out_dir, "ddp.pt"))
    leave_group()


def main(out_dir):
    mp.spawn(worker, args=(out_dir,), nprocs=WORLD, join=True)
    ddp = torch.load(os.path.join(out_dir, "ddp.pt"))
    m = model()
    opt = optimizer(m)
    for x, y in batches():
        opt.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        opt.step()
    for a, b in zip(ddp, m.parameters()):
        assert torch.allclose(a, b.detach(), rtol=1e-4, atol=1e-5), (a - b).abs().max()
    print("GaLore DDP == single process")


if __name__ == "__main__":
    main(sys.argv[1])
