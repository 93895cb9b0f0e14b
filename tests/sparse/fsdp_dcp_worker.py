"""Kill-and-resume through torch.distributed.checkpoint under FSDP2 (2 gloo processes): a run
that saves a distributed checkpoint after 2 steps and exits, resumed by new processes for 2
more steps, must end bit for bit where an uninterrupted 4-step run ends: sharded weights,
sharded optimizer state (moments, AdamS masks as DTensors), GaLore's projectors and
counters, AST masks and step counters.

    python fsdp_dcp_worker.py OUT_DIR {straight | first | resume} CASE
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsdp_worker import CASES, TOKENS_PER_RANK, WORLD, batches, full_state, model, optimizer  # noqa: E402


def build(name):
    from torch.distributed.fsdp import fully_shard
    m = model(CASES[name])
    for layer in m:
        if any(p.requires_grad for p in layer.parameters()):
            fully_shard(layer)
    fully_shard(m)
    return m, optimizer(name, m)


def steps(m, opt, data, rank):
    rows = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
    for x, y in data:
        opt.zero_grad()
        (m(x[rows]) - y[rows]).pow(2).mean().backward()
        opt.step()


def worker(rank, out_dir, phase, name):
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=300),
                            init_method="file://" + os.path.join(out_dir, f"rendezvous_{phase}"))
    m, opt = build(name)
    data = batches()
    ckpt = os.path.join(out_dir, "dcp")
    if phase == "straight":
        steps(m, opt, data, rank)
    elif phase == "first":
        steps(m, opt, data[:2], rank)
        model_sd, optim_sd = get_state_dict(m, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=ckpt)
    else:
        model_sd, optim_sd = get_state_dict(m, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=ckpt)
        set_state_dict(m, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        steps(m, opt, data[2:], rank)
    if phase != "first":
        state = full_state(m)
        if rank == 0:
            torch.save(state, os.path.join(out_dir, f"{phase}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    out_dir, phase, name = sys.argv[1:4]
    mp.spawn(worker, args=(out_dir, phase, name), nprocs=WORLD, join=True)
    if phase == "resume":
        a = torch.load(os.path.join(out_dir, "straight.pt"))
        b = torch.load(os.path.join(out_dir, "resume.pt"))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k, (a[k].float() - b[k].float()).abs().max())
        print(f"{name}: resumed through torch.distributed.checkpoint == uninterrupted", flush=True)
