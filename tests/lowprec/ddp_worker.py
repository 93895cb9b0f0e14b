"""Two CPU processes with gloo train a converted model under DDP; the gradients must equal
one process on the same global batch.

    python ddp_worker.py OUT_DIR [mxfp4 | nvfp4_local_amax | nvfp4_synced_amax]

The default recipe is MXFP4 with round-to-nearest: its blocks run along features in fprop/dgrad
and along tokens in wgrad, and each rank's 64 tokens are whole 32-token wgrad blocks, so
each rank quantizes exactly the blocks the single process does.  Tensor-scaled recipes
take their amax per rank unless ``sync_tensor_amax=True`` all-reduces it; stochastic rounding
indexes bits by position in the local tensor, so with SR DDP is a different, equally valid,
quantization of the same batch.
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import lowprec

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_shared"))
from gloo_exit import leave_group  # noqa: E402

TOKENS_PER_RANK, WORLD = 64, 2


# nvfp4 with round-to-nearest gradients (stochastic rounding indexes bits by position in the
# local tensor): tensor-scaled, so DDP equals one process only with the amax all-reduced
NVFP4_NEAREST = {"dgrad.lhs.rounding": "nearest", "wgrad.lhs.rounding": "nearest"}
RECIPES = {"mxfp4": lambda: lowprec.recipes.get("mxfp4"),
           "nvfp4_local_amax": lambda: lowprec.recipes.get("nvfp4", **NVFP4_NEAREST),
           "nvfp4_synced_amax": lambda: lowprec.recipes.get("nvfp4", sync_tensor_amax=True, **NVFP4_NEAREST)}
RECIPE = sys.argv[2] if len(sys.argv) > 2 else "mxfp4"


def model():
    torch.manual_seed(0)
    return lowprec.convert_model(nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32)), RECIPES[RECIPE](),
                                 seed=0)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(TOKENS_PER_RANK * WORLD, 64, generator=g), torch.randn(TOKENS_PER_RANK * WORLD, 32, generator=g)


def loss_fn(m, x, y):
    return (m(x) - y).pow(2).mean()


def worker(rank, out_dir):
    # rendezvous through a file in the test's own temp dir: no fixed port to collide on a busy
    # machine (gloo's own connections take free ephemeral ports); generous timeout under load
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=300),
                            init_method="file://" + os.path.join(out_dir, "rendezvous"))
    m = DDP(model())
    x, y = batch()
    sl = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
    loss_fn(m, x[sl], y[sl]).backward()
    if rank == 0:
        torch.save([p.grad for p in m.module.parameters()], os.path.join(out_dir, "ddp.pt"))
    leave_group()


def main(out_dir):
    mp.spawn(worker, args=(out_dir,), nprocs=WORLD, join=True)
    ddp_grads = torch.load(os.path.join(out_dir, "ddp.pt"))
    m = model()
    x, y = batch()
    loss_fn(m, x, y).backward()
    worst = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ddp_grads, [p.grad for p in m.parameters()]))
    print(f"{RECIPE}: max relative gradient difference DDP vs one process {worst:.2e}")
    if RECIPE != "nvfp4_local_amax":
        for a, b in zip(ddp_grads, [p.grad for p in m.parameters()]):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
        print("DDP == single process")


if __name__ == "__main__":
    main(sys.argv[1])
